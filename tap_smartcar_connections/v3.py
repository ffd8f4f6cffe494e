"""Smartcar API v3: client-credentials tokens, JSON:API lists with page numbers.

`connections` comes from the Vehicle API (`GET /connections`), `webhooks` and `subscriptions`
from the Management API; all three share one access token. What is known about v3, and how
sure, is in the README ("API v3"): where Smartcar's behaviour is uncertain, the tap fails with
a line naming what it expected rather than guess.
"""

from __future__ import annotations

import json
import re
import time
import typing as t
from http import HTTPStatus
from urllib.parse import parse_qs, urljoin, urlsplit

import msgspec
import requests
from singer_sdk import typing as th
from singer_sdk.exceptions import RetriableAPIError
from singer_sdk.helpers.types import Context
from typing_extensions import override

from tap_smartcar_connections.client import (
    REREADS,
    ConnectionsStream,
    Page,
    SmartcarAPIError,
    SmartcarStream,
    _normalize_timestamps,
    _Refused,
    _StaleCheckpoint,
    _Walk,
    mode_partitions,
    normalize_timestamp,
)
from tap_smartcar_connections.transport import BrokenBody, origin, printable, register_secret

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from singer_sdk import Tap

T = t.TypeVar("T")

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
_TOKEN_ADVICE = {
    400: "check client_id and v3_token_url",
    401: "check client_id and client_secret (Smartcar Dashboard > API Credentials)",
    403: "check client_id and client_secret, and that the application may use API v3",
}
_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]{1,4096}", re.ASCII)
TOKEN_MARGIN_SECONDS = 300.0
"""A token is renewed this long (at most a tenth of its lifetime) before it expires."""
MAX_TOKEN_SECONDS = 86_400


def describe_response(response: requests.Response) -> str:
    """Summarise a v3 error: JSON:API `errors[0]`, or an OAuth `{error, error_description}`.

    Returns:
        For example `429 RATE_LIMIT (code X): Too many requests (requestId 5d2...)`.
    """
    reason = printable(response.reason, 60) or "error"
    try:
        body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError, requests.exceptions.RequestException):
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        error = errors[0]
        text = f"{response.status_code} {printable(error.get('type'), 40) or reason}"
        if code := printable(error.get("code"), 40):
            text += f" (code {code})"
        if detail := printable(error.get("detail") or error.get("title"), 300):
            text += f": {detail}"
        debug = (
            (error.get("meta") or {}).get("debug") if isinstance(error.get("meta"), dict) else None
        )
        request_id = printable(debug.get("requestId"), 80) if isinstance(debug, dict) else ""
        return f"{text} (requestId {request_id})" if request_id else text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = f"{response.status_code} {printable(body['error'], 60)}"
        if description := printable(body.get("error_description"), 300):
            text += f": {description}"
        return text
    return f"{response.status_code} {reason} (the body was not Smartcar's error JSON)"


class _Token(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int | float


_TOKEN_DECODER = msgspec.json.Decoder(_Token)


class AccessToken:
    """One client-credentials access token, shared by the run's v3 streams.

    Written here rather than with the SDK's `OAuthAuthenticator`, which posts with plain
    `requests` (redirects followed, no whole-response deadline), retries nothing, and puts
    the token endpoint's whole body into its error.
    """

    def __init__(self) -> None:
        """Start without a token: the first request fetches one."""
        self.value = ""
        self.renew_at = 0.0

    def get(self, stream: SmartcarStream) -> str:
        """The current token, fetched through `stream` when there is none or it is ending."""
        if not self.value or time.monotonic() >= self.renew_at:
            stream.request_decorator(self._fetch)(stream)
        return self.value

    def discard(self, value: str) -> None:
        """Forget `value` (refused with a 401), so that the next `get` fetches a new one."""
        if self.value == value:
            self.value = ""

    def _fetch(self, stream: SmartcarStream) -> None:
        config = stream.config
        prepared = requests.Request(
            "POST",
            config["v3_token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": config["client_id"],
                "client_secret": config["client_secret"],
            },
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
                "User-Agent": stream.http_headers.get("User-Agent", "tap-smartcar-connections"),
            },
        ).prepare()
        response = stream._send(prepared)
        status = response.status_code
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            raise RetriableAPIError(f"token endpoint {describe_response(response)}", response)
        if not HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
            advice = _TOKEN_ADVICE.get(status, "check v3_token_url, client_id and client_secret")
            if HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
                advice = "the tap follows no redirect; check v3_token_url"
            msg = (
                f"Smartcar's token endpoint refused the client credentials: "
                f"{describe_response(response)}. To fix: {advice}"
            )
            raise SmartcarAPIError(msg)
        try:
            token = _TOKEN_DECODER.decode(response.content)
        except (msgspec.DecodeError, RecursionError) as exc:
            msg = f"{status} from the token endpoint, not the expected token JSON ({exc})"
            raise BrokenBody(printable(msg, 300), response) from exc
        if not _TOKEN_CHARACTERS.fullmatch(token.access_token):
            msg = f"{status} from the token endpoint with an access_token that is not a token"
            raise BrokenBody(msg, response)
        register_secret(token.access_token)
        if token.token_type.lower() != "bearer" or not token.expires_in >= 1:
            msg = (
                f"{status} from the token endpoint with token_type "
                f"{printable(token.token_type, 20)!r} and expires_in {token.expires_in}, not a "
                # Quoted: redaction takes any "Bearer <word>" for a credential.
                "token of type 'Bearer' with a lifetime"
            )
            raise BrokenBody(msg, response)
        lifetime = int(min(token.expires_in, MAX_TOKEN_SECONDS))
        self.value = token.access_token
        self.renew_at = time.monotonic() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 10)
        stream.logger.info("Fetched a Smartcar API v3 access token (valid %d s)", lifetime)


class _Links(msgspec.Struct):
    """`links`: an explicit null `next` marks the last page; a missing one proves nothing."""

    next: str | msgspec.UnsetType | None = msgspec.UNSET


class _ListMeta(msgspec.Struct, rename="camel"):
    page_number: int | msgspec.UnsetType = msgspec.UNSET
    page_size: int | msgspec.UnsetType = msgspec.UNSET
    total_count: int | msgspec.UnsetType = msgspec.UNSET
    order_by: str | msgspec.UnsetType | None = msgspec.UNSET
    order_direction: str | msgspec.UnsetType | None = msgspec.UNSET


class _List(msgspec.Struct, t.Generic[T]):
    """A JSON:API collection; unknown fields are ignored."""

    data: list[T]
    meta: _ListMeta = msgspec.field(default_factory=_ListMeta)
    links: _Links | msgspec.UnsetType = msgspec.UNSET


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


class _V3Stream(SmartcarStream):
    """What every v3 stream shares: the access token, JSON:API errors and page numbers."""

    URL_SETTINGS = ("v3_vehicle_api_url", "v3_token_url")
    ADVICE = ADVICE

    def __init__(self, tap: Tap, token: AccessToken) -> None:
        """Create the stream, sharing `token` with the run's other v3 streams."""
        super().__init__(tap)
        self.token = token

    @property
    @override
    def url_base(self) -> str:
        return str(self.config[self.URL_SETTINGS[0]]).rstrip("/")

    @property
    @override
    def http_headers(self) -> dict[str, t.Any]:
        return {**super().http_headers, "Accept": "application/vnd.api+json, application/json"}

    @override
    def describe_response(self, response: requests.Response) -> str:
        return describe_response(response)

    @override
    def _request(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """Send with the access token; on a 401, fetch a new token once and try again.

        A token can be revoked, or expire early, while the run still holds it.
        """
        value = self.token.get(self)
        try:
            return self._send_with(prepared_request, value, context)
        except _Refused as exc:
            if exc.status != HTTPStatus.UNAUTHORIZED:
                raise
        self.logger.info("The access token was refused (401): fetching a new one")
        self.token.discard(value)
        try:
            return self._send_with(prepared_request, self.token.get(self), context)
        except _Refused as exc:
            if exc.status == HTTPStatus.UNAUTHORIZED:
                msg = f"{exc} (a new access token was refused too)"
                raise SmartcarAPIError(msg) from exc
            raise

    def _send_with(
        self, request: requests.PreparedRequest, token: str, context: Context | None
    ) -> requests.Response:
        request.headers["Authorization"] = f"Bearer {token}"
        return super()._request(request, context)

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
            "page[size]": self.config["page_size"],
            "page[number]": int(next_page_token or 1),
        }

    def _decode(self, response: requests.Response, decoder: msgspec.json.Decoder[t.Any]) -> t.Any:
        try:
            return decoder.decode(response.content)
        except (msgspec.DecodeError, RecursionError) as exc:
            msg = (
                f"{response.status_code} with a body that is not the expected {self.name} "
                f"JSON:API list ({printable(str(exc), 200)})"
            )
            raise BrokenBody(msg, response) from exc

    def _paging(self, response: requests.Response, body: _List[t.Any], token: str | None) -> Page:
        """The page's place in the list: next page number, total, order.

        `links.next` is followed as the page number it names, only on this URL; the tap
        builds the request itself, so a link elsewhere never receives the token.

        Raises:
            BrokenBody: If the page is not the one asked for, or its links and counts disagree.
            SmartcarAPIError: If the API pages with another size than `page_size`.
        """
        number = int(token or 1)
        meta, size = body.meta, int(self.config["page_size"])
        if meta.page_number not in {msgspec.UNSET, number}:
            msg = f"{response.status_code} with page {meta.page_number}, not page {number}"
            raise BrokenBody(msg, response)
        if meta.page_size not in {msgspec.UNSET, size}:
            msg = (
                f"Smartcar API {self.name} pages hold {meta.page_size} items, not the page_size "
                f"{size} asked for: set page_size to {meta.page_size}"
            )
            raise SmartcarAPIError(msg)
        total = meta.total_count
        link = body.links.next if isinstance(body.links, _Links) else msgspec.UNSET
        if total is msgspec.UNSET or total < 0:
            # Without the list's size, a walk over shifting pages cannot be checked.
            shown = "no" if total is msgspec.UNSET else f"a negative ({total})"
            msg = f"{response.status_code} with {shown} meta.totalCount"
            raise BrokenBody(msg, response)
        if link is msgspec.UNSET:
            # JSON:API may leave `next` out on the last page; only the count can say it is.
            if (number - 1) * size + len(body.data) != total:
                msg = (
                    f"{response.status_code} with no links.next (not even null) on page "
                    f"{number}, while meta.totalCount says {total} items"
                )
                raise BrokenBody(msg, response)
            link = None
        if link is None:
            if (number - 1) * size + len(body.data) < total:
                msg = (
                    f"{response.status_code} with links.next null on page {number}, but "
                    f"meta.totalCount says {total} items"
                )
                raise BrokenBody(msg, response)
            return Page([], None, total)
        if len(body.data) != size or number * size >= total:
            msg = (
                f"{response.status_code} with links.next after page {number} of "
                f"{len(body.data)} items, meta.totalCount {total}"
            )
            raise BrokenBody(msg, response)
        request_url = str(response.request.url or "")
        target = urlsplit(urljoin(request_url, link))
        here = urlsplit(request_url)
        numbers = parse_qs(target.query).get("page[number]", [])
        if (target.scheme, target.netloc, target.path) != (here.scheme, here.netloc, here.path) or (
            numbers != [str(number + 1)]
        ):
            shown = f"{origin(link)}{printable(target.path, 100)}"
            msg = f"{response.status_code} with links.next to {shown}, not page {number + 1} here"
            raise BrokenBody(msg, response)
        return Page([], str(number + 1), total)


class V3ConnectionsStream(_V3Stream, ConnectionsStream):
    """`connections` from API v3: `GET /connections` with page numbers and vehicle details.

    Pages are numbered, so the list shifts under a walk when a connection comes or goes: the
    walk sends each connection once, and checks `meta.totalCount` (see `ConnectionsStream`).
    The early stop at the bookmark is only taken when `meta.orderDirection` is `desc`.
    """

    path = "/connections"
    API_VERSION = "v3"
    PAGES_SHIFT = True

    @override
    def _parse_page(self, response: requests.Response, token: str | None) -> Page:
        body: _List[_Connection] = self._decode(response, _CONNECTIONS)
        page = self._paging(response, body, token)
        items = body.data
        created = _stamps(response, [item.meta.created_at for item in items])
        updated = _stamps(response, [item.meta.updated_at for item in items])
        records = []
        for item, stamp, changed in zip(items, created, updated, strict=True):
            relations, attributes, vehicle = (
                item.relationships,
                item.attributes,
                item.attributes.vehicle,
            )
            user = relations.user.data if relations.user is not None else None
            user_id = user.id if user is not None else getattr(attributes.user, "id", None)
            if user_id is None or relations.vehicle.data is None:
                missing = "relationships.vehicle.data.id" if user_id else "a user id"
                msg = (
                    f"{response.status_code} with connection {printable(item.id, 40)} without "
                    f"{missing} (relationships.user.data.id or attributes.user.id)"
                )
                raise BrokenBody(msg, response)
            records.append(
                {
                    "userId": user_id,
                    "vehicleId": relations.vehicle.data.id,
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
            )
        ordered = str(body.meta.order_direction).lower() == "desc" and body.meta.order_by in {
            msgspec.UNSET,
            None,
            "createdAt",
            "meta.createdAt",
        }
        return Page(records, page.next, page.total, ordered)

    @override
    def _identity(self, record: dict[str, t.Any], key: str) -> str:
        """The connection's own id: one user may connect one vehicle twice, and both count."""
        return f"id:{record['connectionId']}"

    @override
    def _resume_token(self, checkpoint: dict[str, t.Any], head: _Walk) -> str:
        """The page where the interrupted walk's next connection is now, or before it.

        Since the checkpoint, `head.records` connections came in above it; if the list grew by
        less than that, some were removed, perhaps above it: start that many earlier, and
        skip what is newer than where the walk had come (`_read`'s `at_most`).

        Raises:
            _StaleCheckpoint: If the checkpoint has no page number or list size.
        """
        number, then, now = checkpoint.get("cursor"), checkpoint.get("total"), head.total
        if not (isinstance(number, str) and number.isdecimal() and isinstance(then, int)):
            msg = "it has no page number and list size"
            raise _StaleCheckpoint(msg)
        size = int(self.config["page_size"])
        removed = max(0, then + head.records - (now if now is not None else then))
        position = max(0, (int(number) - 1) * size + head.records - removed)
        return str(position // size + 1)


_CONNECTIONS = msgspec.json.Decoder(_List[_Connection])
_WEBHOOKS = msgspec.json.Decoder(_List[_Webhook])
_SUBSCRIPTIONS = msgspec.json.Decoder(_List[_Subscription])


class _ManagementStream(_V3Stream):
    """A small Management API list, read whole every run (FULL_TABLE), deduplicated by `id`.

    ACTIVATE_VERSION follows the same rule as `connections`: only after every partition was
    read to its last page while `meta.totalCount` stayed the same and equalled the items read.
    """

    URL_SETTINGS = ("v3_management_api_url", "v3_token_url")
    primary_keys = ("id",)
    replication_key = None
    TYPE_CONFORMANCE_LEVEL = ConnectionsStream.TYPE_CONFORMANCE_LEVEL

    @override
    def request_records(self, context: Context | None) -> Iterator[dict[str, t.Any]]:
        fetch = self.request_decorator(self._fetch_page)
        limit = self.ABORT_AT_RECORD_COUNT  # set in a dry run (`--test`)
        sent: set[str] = set()
        for attempt in range(REREADS + 1):
            walk = _Walk(context)
            token: str | None = None
            while True:
                page = fetch(context, token)
                walk.pages += 1
                if page.total is not None:
                    walk.totals.add(page.total)
                    walk.total = page.total
                for record in page.records:
                    walk.read.add(record["id"])
                    if record["id"] not in sent:
                        if limit is not None and self._emitted >= limit:
                            return  # a dry run stops here, without the SDK's abort (an error)
                        sent.add(record["id"])
                        self._emitted += 1
                        yield record
                token = page.next
                if token is None:
                    break
            doubt = walk.doubt("end", strict=True, noun="items")
            if doubt is None:
                self._complete_walks += 1
                return
            if attempt < REREADS:
                self.logger.warning(
                    "%s %s: %s, so an item may have been skipped: reading it again (%d of %d)",
                    self.name.capitalize(),
                    json.dumps(context),
                    doubt,
                    attempt + 1,
                    REREADS,
                )
        self.logger.warning(
            "%s %s: %s on every one of %d reads: no ACTIVATE_VERSION is sent, so the target "
            "deletes nothing. The next run reads it again",
            self.name.capitalize(),
            json.dumps(context),
            doubt,
            REREADS + 1,
        )


_SIGNAL = th.ObjectType(
    th.Property("group", th.StringType, description="Signal group, e.g. Odometer."),
    th.Property("name", th.StringType, description="Signal name."),
    th.Property("code", th.StringType, description="Signal code, e.g. odometer-traveleddistance."),
)


class WebhooksStream(_ManagementStream):
    """The application's webhooks (`GET /webhooks`), API v3 only."""

    name = "webhooks"
    path = "/webhooks"
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
    def _parse_page(self, response: requests.Response, token: str | None) -> Page:
        body: _List[_Webhook] = self._decode(response, _WEBHOOKS)
        page = self._paging(response, body, token)
        created = _stamps(response, [item.meta.created_at for item in body.data])
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
            for item, stamp in zip(body.data, created, strict=True)
        ]
        return page


class SubscriptionsStream(_ManagementStream):
    """Which vehicles each webhook is subscribed to (`GET /subscriptions`), API v3 only."""

    name = "subscriptions"
    path = "/subscriptions"
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

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]]:
        """One partition per configured mode, with the user and vehicle filters."""
        return mode_partitions(self.config)

    @override
    def _parse_page(self, response: requests.Response, token: str | None) -> Page:
        body: _List[_Subscription] = self._decode(response, _SUBSCRIPTIONS)
        page = self._paging(response, body, token)
        created = _stamps(response, [item.meta.created_at for item in body.data])
        updated = _stamps(response, [item.meta.updated_at for item in body.data])
        records = []
        for item, stamp, changed in zip(body.data, created, updated, strict=True):
            relations, vehicle = item.relationships, item.attributes.vehicle
            records.append(
                {
                    "id": item.id,
                    "webhookId": _related(relations.webhook),
                    "userId": _related(relations.user),
                    "vehicleId": _related(relations.vehicle),
                    "mode": vehicle.mode,
                    "make": vehicle.make,
                    "model": vehicle.model,
                    "year": vehicle.year,
                    "powertrainType": vehicle.powertrain_type,
                    "createdAt": stamp,
                    "updatedAt": changed,
                }
            )
        page.records = records
        return page


@t.overload
def _stamps(response: requests.Response, values: list[str]) -> list[str]: ...
@t.overload
def _stamps(response: requests.Response, values: list[str | None]) -> list[str | None]: ...
def _stamps(response: requests.Response, values: list[t.Any]) -> list[t.Any]:
    """Normalise a page's timestamps like `connectedAt`, a page at a time; None stays None.

    Raises:
        BrokenBody: If one is not an ISO 8601 date-time.
    """
    try:
        if None not in values:
            return _normalize_timestamps(values)
        return [None if value is None else normalize_timestamp(value) for value in values]
    except ValueError as exc:
        msg = f"{response.status_code} with a date that is not ISO 8601 ({exc})"
        raise BrokenBody(printable(msg, 300), response) from exc


def _signals(signals: list[_Signal] | None) -> list[dict[str, str | None]] | None:
    if signals is None:
        return None
    return [{"group": s.group, "name": s.name, "code": s.code} for s in signals]


def _related(relation: _Relation) -> str | None:
    return relation.data.id if relation.data is not None else None
