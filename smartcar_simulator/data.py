"""The simulator's data: connections, their order, generated data, the store and cursors.

Connections are kept per mode in ascending `SortKey` order next to their pre-encoded JSON
(`ConnectionStore`), so an unfiltered page costs a bisect plus `limit` rows whatever the data
size. Cursors (`CursorCodec`) are opaque, signed and bound to the query they page through.

API v3 sees the same connections with more fields (`Connection.v3_dict`): the ones a mapping
does not give are derived from its (userId, vehicleId) pair, so every run agrees. Webhooks and
subscriptions (v3 only) are flat records (`webhook_record`, `subscription_record`).
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

MODES = ("live", "simulated", "test")
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

SortKey = tuple[int, str, str]
"""(microseconds since the epoch, userId, vehicleId): the order connections are served in."""

Scope = tuple[str, str, str]
"""(mode, user_id, vehicle_id): the query a cursor pages through."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TWO_YEARS_US = 730 * 24 * 3600 * 1_000_000
_PRECISIONS = (0, 1, 3)
# Base64 of these bytes is "+/+/", so every cursor needs URL-encoding, as real ones do.
_CURSOR_MAGIC = b"\xfb\xff\xbf"

V3_MODES = ("live", "simulated")
"""API v3 has no test mode."""
V3_KEYS = ("connectionId", "permissions", "make", "model", "year", "powertrainType", "updatedAt")
"""Optional keys of a connection mapping that only API v3 serves."""
_VEHICLES = (
    ("Tesla", "Model 3", "BEV"),
    ("Tesla", "Model Y", "BEV"),
    ("Ford", "Mustang Mach-E", "BEV"),
    ("Ford", "F-150", "ICE"),
    ("Toyota", "RAV4", "HEV"),
    ("Toyota", "Prius Prime", "PHEV"),
    ("Hyundai", "Ioniq 5", "BEV"),
    ("Kia", "EV6", "BEV"),
    ("BMW", "i4", "BEV"),
    ("Volkswagen", "ID.4", "BEV"),
    ("Chevrolet", "Bolt EV", "BEV"),
    ("Jeep", "Wrangler 4xe", "PHEV"),
    ("Honda", "Civic", "ICE"),
    ("Rivian", "R1T", "BEV"),
)
_PERMISSIONS = (
    "read_battery",
    "read_charge",
    "read_fuel",
    "read_location",
    "read_odometer",
    "read_tires",
    "read_vin",
    "control_charge",
    "control_security",
)
_SIGNALS = (
    ("Charge", "Charge status", "CHARGE_STATUS"),
    ("Charge", "State of charge", "STATE_OF_CHARGE"),
    ("Location", "Preferred location", "PREFERRED_LOCATION"),
    ("Odometer", "Traveled distance", "TRAVELED_DISTANCE"),
    ("Tires", "Pressure", "TIRES_PRESSURE"),
)
_NINETY_DAYS_US = 90 * 24 * 3600 * 1_000_000


@dataclass(frozen=True, slots=True)
class Connection:
    """One vehicle connection, with `connected_at` exactly as it is served."""

    user_id: str
    vehicle_id: str
    connected_at: str
    mode: str = "live"
    v3: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """Given values of `V3_KEYS` (permissions as a tuple); the others are derived."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Connection:
        """Build a connection from an API-shaped mapping (`userId`, `vehicleId`, ...).

        Args:
            data: A mapping with `userId`, `vehicleId`, `connectedAt`, optionally `mode` and
                any of `V3_KEYS`.

        Returns:
            The connection.

        Raises:
            ValueError: A key is missing, the mode is unknown, a timestamp is not ISO 8601 or a
                v3 value has the wrong type.
        """
        try:
            connection = cls(
                str(data["userId"]),
                str(data["vehicleId"]),
                str(data["connectedAt"]),
                str(data.get("mode", "live")),
                tuple((key, _v3_value(key, data[key])) for key in V3_KEYS if key in data),
            )
        except KeyError as exc:
            raise ValueError(f"connection is missing {exc}: {dict(data)!r}") from None
        if connection.mode not in MODES:
            raise ValueError(f"unknown mode {connection.mode!r}")
        return connection

    def v3_dict(self) -> dict[str, Any]:
        """Return the flat v3 view: the v2 fields plus every one of `V3_KEYS`.

        Raises:
            ValueError: `connected_at` is not an ISO 8601 timestamp.
        """
        details = derived_details(self.user_id, self.vehicle_id, self.connected_at)
        details.update(self.v3)
        details["permissions"] = list(details["permissions"])
        return {**self.to_dict(), **details}

    @property
    def sort_key(self) -> SortKey:
        """The key connections are ordered by (newest first means descending).

        Raises:
            ValueError: `connected_at` is not an ISO 8601 timestamp.
        """
        return (instant(self.connected_at), self.user_id, self.vehicle_id)

    def to_json(self) -> bytes:
        """Return the connection as the API serves it, encoded."""
        fields = (self.user_id, self.vehicle_id, self.connected_at, self.mode)
        user, vehicle, at, mode = map(encode_basestring_ascii, fields)
        return (
            f'{{"userId":{user},"vehicleId":{vehicle},"connectedAt":{at},"mode":{mode}}}'.encode()
        )

    def to_dict(self) -> dict[str, str]:
        """Return the connection as the API serves it."""
        return {
            "userId": self.user_id,
            "vehicleId": self.vehicle_id,
            "connectedAt": self.connected_at,
            "mode": self.mode,
        }


def _v3_value(key: str, value: Any) -> Any:
    if key == "year":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"year must be an integer, got {value!r}")
        return value
    if key == "permissions":
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
            raise ValueError(f"permissions must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    if key == "updatedAt":
        instant(value)
    return value


def _pair_digest(*parts: str) -> bytes:
    # A hash, not a seeded generator: cheap enough to derive 30,000 connections on the fly.
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def _digest_uuid4(digest: bytes) -> str:
    value = int.from_bytes(digest[:16])
    value = value & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def vehicle_details(user_id: str, vehicle_id: str) -> dict[str, Any]:
    """Return the vehicle a (userId, vehicleId) pair is derived to be: make, model, year, ...

    Args:
        user_id: The userId.
        vehicle_id: The vehicleId.

    Returns:
        `make`, `model`, `year` and `powertrainType`, the same on every call.
    """
    digest = _pair_digest("vehicle", user_id, vehicle_id)
    make, model, powertrain = _VEHICLES[digest[0] % len(_VEHICLES)]
    return {
        "make": make,
        "model": model,
        "year": 2014 + digest[1] % 12,
        "powertrainType": powertrain,
    }


def derived_details(user_id: str, vehicle_id: str, created_at: str) -> dict[str, Any]:
    """Return the v3-only fields of a connection, derived from its pair when not given.

    Args:
        user_id: The userId.
        vehicle_id: The vehicleId.
        created_at: Its connection time (`updatedAt` is up to 90 days later).

    Returns:
        A value for every one of `V3_KEYS` (permissions as a tuple).
    """
    digest = _pair_digest("connection", user_id, vehicle_id)
    mask = int.from_bytes(digest[16:18])
    extra = sorted(p for i, p in enumerate(_PERMISSIONS) if mask >> i & 1)
    later = instant(created_at) + int.from_bytes(digest[18:26]) % _NINETY_DAYS_US
    later = -(-later // 1000) * 1000  # whole milliseconds, never before created_at
    return {
        "connectionId": _digest_uuid4(digest),
        "permissions": ("read_vehicle_info", *extra),
        **vehicle_details(user_id, vehicle_id),
        "updatedAt": _format_instant(later, 3),
    }


def instant(timestamp: str) -> int:
    """Return an ISO 8601 timestamp as microseconds since the epoch (naive means UTC).

    Args:
        timestamp: E.g. `2024-05-01T10:11:12.5Z` or `2024-05-01T10:11:12+00:00`.

    Returns:
        Microseconds since 1970-01-01T00:00:00Z.
    """
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


@functools.cache
def _date(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


def _format_instant(micros: int, digits: int) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    day, second = divmod(seconds, 86400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    text = f"{_date(day)}T{hour:02d}:{minute:02d}:{second:02d}"
    if not digits:
        return f"{text}Z"
    return f"{text}.{fraction:06d}"[: len(text) + 1 + digits] + "Z"


def _uuid4(rng: random.Random) -> str:
    value = rng.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def generate_connections(
    n: int,
    *,
    seed: int = 0,
    modes: Sequence[str] = ("live", "simulated"),
    start: datetime | None = None,
    tie_every: int = 7,
) -> list[dict[str, str]]:
    """Generate reproducible connections over the two years before `start`, in served order.

    Timestamps mix whole seconds, tenths and milliseconds. Every `tie_every`-th connection is
    the previous user connecting another vehicle at the same instant (written in a possibly
    different precision), in the same mode.

    Args:
        n: How many connections.
        seed: Seed for the random generator.
        modes: Modes to draw from.
        start: The instant all connections precede (naive means UTC); 2026-01-01 by default.
        tie_every: Period of timestamp ties; 0 for none.

    Returns:
        API-shaped connections (`userId`, `vehicleId`, `connectedAt`, `mode`).

    Raises:
        ValueError: An unknown mode was given.
    """
    if not modes or set(modes) - set(MODES):
        raise ValueError(f"modes must be drawn from {MODES}, got {modes!r}")
    rng = random.Random(seed)  # noqa: S311 -- reproducible data, not secrets
    end = start or DEFAULT_START
    at = instant(end.isoformat())
    max_gap = 2 * max(1, _TWO_YEARS_US // max(n, 1))
    user, mode, group = "", modes[0], 0
    result: list[dict[str, str]] = []
    for i in range(n):
        if tie_every > 0 and result and i % tie_every == tie_every - 1:
            digits = rng.choice([d for d in _PRECISIONS if at % 10 ** (6 - d) == 0])
        else:
            digits = _PRECISIONS[int(rng.random() * len(_PRECISIONS))]
            at -= 1 + int(rng.random() * max_gap)
            at -= at % 10 ** (6 - digits)
            user = _uuid4(rng)
            mode = modes[int(rng.random() * len(modes))]
            group = len(result)
        vehicle = _uuid4(rng)
        # Within a tie the API orders by vehicleId, descending: insert where it would be served.
        position = len(result)
        while position > group and result[position - 1]["vehicleId"] < vehicle:
            position -= 1
        result.insert(
            position,
            {
                "userId": user,
                "vehicleId": vehicle,
                "connectedAt": _format_instant(at, digits),
                "mode": mode,
            },
        )
    return result


class ConnectionStore:
    """Connections per mode in ascending `SortKey` order, next to their pre-encoded JSON.

    Not thread-safe: the simulator serialises access with its lock.
    """

    def __init__(self, connections: Iterable[Mapping[str, str]] = ()) -> None:
        """Load the data.

        Args:
            connections: API-shaped connections; a later duplicate (userId, vehicleId) wins.
        """
        self._keys: dict[str, list[SortKey]] = {}
        self._rows: dict[str, list[bytes]] = {}
        self._items: dict[str, list[Connection]] = {}
        self._index: dict[tuple[str, str], tuple[str, SortKey]] = {}
        latest: dict[tuple[str, str], Connection] = {}
        for data in connections:
            connection = Connection.from_mapping(data)
            latest[connection.user_id, connection.vehicle_id] = connection
        entries: dict[str, list[tuple[SortKey, bytes, Connection]]] = {m: [] for m in MODES}
        for pair, connection in latest.items():
            key = connection.sort_key
            entries[connection.mode].append((key, connection.to_json(), connection))
            self._index[pair] = (connection.mode, key)
        for mode, rows in entries.items():
            rows.reverse()  # data usually comes newest first: make sorting nearly free
            rows.sort(key=lambda entry: entry[0])
            self._keys[mode] = [key for key, _, _ in rows]
            self._rows[mode] = [row for _, row, _ in rows]
            self._items[mode] = [item for _, _, item in rows]

    def __len__(self) -> int:
        return len(self._index)

    def add(self, connections: Iterable[Connection]) -> None:
        """Add connections, replacing any with the same userId and vehicleId.

        Args:
            connections: Parsed connections.
        """
        for connection in connections:
            pair = (connection.user_id, connection.vehicle_id)
            self.discard(pair)
            key = connection.sort_key
            keys = self._keys[connection.mode]
            at = bisect.bisect_left(keys, key)
            keys.insert(at, key)
            self._rows[connection.mode].insert(at, connection.to_json())
            self._items[connection.mode].insert(at, connection)
            self._index[pair] = (connection.mode, key)

    def discard(self, pair: tuple[str, str]) -> bool:
        """Remove the connection of (userId, vehicleId), returning whether it existed."""
        found = self._index.pop(pair, None)
        if found is None:
            return False
        mode, key = found
        at = bisect.bisect_left(self._keys[mode], key)
        del self._keys[mode][at]
        del self._rows[mode][at]
        del self._items[mode][at]
        return True

    def items(self, mode: str, *, newest_first: bool = True) -> list[Connection]:
        """Return the connections of a mode, newest first unless told otherwise."""
        items = self._items[mode]
        return items[::-1] if newest_first else list(items)

    def window(
        self,
        mode: str,
        offset: int,
        size: int,
        user_id: str = "",
        vehicle_id: str = "",
        *,
        newest_first: bool = True,
    ) -> tuple[list[Connection], int]:
        """Pick one offset page of the data as it is now (API v3 paging).

        Args:
            mode: The mode (one of `MODES`).
            offset: How many matching connections to skip.
            size: At most this many.
            user_id: Only this userId ("" for any).
            vehicle_id: Only this vehicleId ("" for any).
            newest_first: Newest first, else oldest first.

        Returns:
            The page's connections and how many match in all.
        """
        items = self._items[mode]
        if user_id or vehicle_id:
            ordered = reversed(items) if newest_first else iter(items)
            matches = [
                c
                for c in ordered
                if (not user_id or c.user_id == user_id)
                and (not vehicle_id or c.vehicle_id == vehicle_id)
            ]
            return matches[offset : offset + size], len(matches)
        total = len(items)
        if not newest_first:
            return items[offset : offset + size], total
        end = total - offset
        return (items[max(0, end - size) : end][::-1] if end > 0 else []), total

    def rows(self, mode: str | None = None) -> list[bytes]:
        """Return the encoded connections of a mode (None: every mode), newest first."""
        if mode is not None:
            return self._rows[mode][::-1]
        merged = sorted(
            (pair for m in MODES for pair in zip(self._keys[m], self._rows[m], strict=True)),
            reverse=True,
        )
        return [row for _, row in merged]

    def select(
        self, mode: str, after: SortKey | None, limit: int, user_id: str, vehicle_id: str
    ) -> tuple[list[bytes], SortKey | None]:
        """Pick one page, newest first.

        Args:
            mode: The mode (one of `MODES`).
            after: Only connections older than this key; None from the newest.
            limit: At most this many.
            user_id: Only this userId ("" for any).
            vehicle_id: Only this vehicleId ("" for any).

        Returns:
            The page's encoded connections, and the key of its last one if more follow.
        """
        keys, rows = self._keys[mode], self._rows[mode]
        end = len(keys) if after is None else bisect.bisect_left(keys, after)
        if user_id or vehicle_id:

            def matches(key: SortKey) -> bool:
                return (not user_id or key[1] == user_id) and (
                    not vehicle_id or key[2] == vehicle_id
                )

            hits = (i for i in range(end - 1, -1, -1) if matches(keys[i]))
            picked = [i for _, i in zip(range(limit), hits, strict=False)]
            more = next(hits, None) is not None
        else:
            picked = list(range(end - 1, max(0, end - limit) - 1, -1))
            more = end - limit > 0
        return [rows[i] for i in picked], keys[picked[-1]] if more else None


class CursorCodec:
    """Opaque, signed cursors: (page number, last key served, query scope)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(16)

    def rotate(self) -> None:
        """Sign with a new key: every cursor encoded before no longer decodes."""
        self._secret = secrets.token_bytes(16)

    def encode(self, page: int, key: SortKey, scope: Scope) -> str:
        """Return the cursor to the page after `key`, the `page`-th of the query `scope`."""
        payload = json.dumps([page, *key, *scope], separators=(",", ":")).encode()
        body = base64.b64encode(_CURSOR_MAGIC + payload)
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return f"{body.decode()}:{base64.b64encode(mac).decode()}"

    def decode(self, cursor: str) -> tuple[int, SortKey, Scope] | None:
        """Return (page, key, scope) of a cursor, or None when it is not one we signed."""
        body, _, mac = cursor.encode("utf-8", "replace").rpartition(b":")
        expected = base64.b64encode(hmac.new(self._secret, body, hashlib.sha256).digest()[:16])
        if not hmac.compare_digest(mac, expected):
            return None
        page, micros, user, vehicle, *scope = json.loads(base64.b64decode(body)[3:])
        return page, (micros, user, vehicle), (scope[0], scope[1], scope[2])


def _signal_list(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(item, Mapping) and {"group", "name", "code"} <= set(item) for item in value
    ):
        raise ValueError(f"{what} must be a list of {{group, name, code}} objects")
    return [{k: str(item[k]) for k in ("group", "name", "code")} for item in value]


def _require(data: Mapping[str, Any], what: str, *keys: str) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"{what} is missing {', '.join(missing)}: {dict(data)!r}")


def webhook_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """Parse a webhook, API-shaped (`id`, `attributes`, `meta`) or flat, into a flat record.

    Args:
        data: Flat: `id`, `name`, `callbackUri`, `createdAt` and optionally `errorCallbackUri`
            (None), `isEnabled` (True), `autoSubscribe` (False), `triggers` and `data` ([]).
            API-shaped: the same under `attributes`, and `meta.createdAt`.

    Returns:
        `{id, name, callbackUri, errorCallbackUri, isEnabled, autoSubscribe, triggers, data,
        createdAt}`.

    Raises:
        ValueError: A key is missing or a value has the wrong type.
    """
    if isinstance(data.get("attributes"), Mapping):
        _require(data, "webhook", "id", "meta")
        data = {**data["attributes"], "id": data["id"], "createdAt": data["meta"].get("createdAt")}
    _require(data, "webhook", "id", "name", "callbackUri", "createdAt")
    record = {
        "id": str(data["id"]),
        "name": str(data["name"]),
        "callbackUri": str(data["callbackUri"]),
        "errorCallbackUri": data.get("errorCallbackUri"),
        "isEnabled": data.get("isEnabled", True),
        "autoSubscribe": data.get("autoSubscribe", False),
        "triggers": _signal_list(data.get("triggers", []), "triggers"),
        "data": _signal_list(data.get("data", []), "data"),
        "createdAt": str(data["createdAt"]),
    }
    if not isinstance(record["isEnabled"], bool) or not isinstance(record["autoSubscribe"], bool):
        raise ValueError("isEnabled and autoSubscribe must be booleans")
    if record["errorCallbackUri"] is not None and not isinstance(record["errorCallbackUri"], str):
        raise ValueError("errorCallbackUri must be a string or null")
    instant(record["createdAt"])
    return record


def subscription_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """Parse a subscription, API-shaped or flat, into a flat record.

    Args:
        data: Flat: `id`, `webhookId`, `userId`, `vehicleId`, `createdAt` and optionally
            `mode` ("live"), `updatedAt` (`createdAt`), `make`, `model`, `year` and
            `powertrainType` (derived from the pair as for connections). API-shaped: `id`,
            `attributes.vehicle`, `meta`, and `relationships.{webhook,user,vehicle}.data.id`.

    Returns:
        `{id, webhookId, userId, vehicleId, mode, make, model, year, powertrainType, createdAt,
        updatedAt}`.

    Raises:
        ValueError: A key is missing, the mode is not a v3 mode or a timestamp is not ISO 8601.
    """
    if isinstance(data.get("relationships"), Mapping):
        _require(data, "subscription", "id", "meta")
        links = data["relationships"]
        try:
            ids = {
                f"{name}Id": links[name]["data"]["id"] for name in ("webhook", "user", "vehicle")
            }
        except (KeyError, TypeError):
            raise ValueError(f"subscription relationships are incomplete: {dict(data)!r}") from None
        vehicle = (data.get("attributes") or {}).get("vehicle") or {}
        data = {**vehicle, **data["meta"], **ids, "id": data["id"]}
    _require(data, "subscription", "id", "webhookId", "userId", "vehicleId", "createdAt")
    user_id, vehicle_id = str(data["userId"]), str(data["vehicleId"])
    details = vehicle_details(user_id, vehicle_id)
    record = {
        "id": str(data["id"]),
        "webhookId": str(data["webhookId"]),
        "userId": user_id,
        "vehicleId": vehicle_id,
        "mode": str(data.get("mode", "live")),
        **{key: data.get(key, value) for key, value in details.items()},
        "createdAt": str(data["createdAt"]),
        "updatedAt": str(data.get("updatedAt", data["createdAt"])),
    }
    if record["mode"] not in V3_MODES:
        raise ValueError(f"subscription mode must be one of {V3_MODES}, got {record['mode']!r}")
    _v3_value("year", record["year"])
    instant(record["createdAt"])
    instant(record["updatedAt"])
    return record


def generate_webhooks(
    n: int = 3, *, seed: int = 0, start: datetime | None = None
) -> list[dict[str, Any]]:
    """Generate reproducible webhooks (flat records), newest first.

    Args:
        n: How many.
        seed: Seed for the random generator.
        start: The instant all webhooks precede (naive means UTC); 2026-01-01 by default.

    Returns:
        Flat webhook records (see `webhook_record`).
    """
    rng = random.Random(seed)  # noqa: S311 -- reproducible data, not secrets
    at = instant((start or DEFAULT_START).isoformat())
    result = []
    for i in range(n):
        at -= 1_000_000 * (3600 + rng.randrange(30 * 86400))
        signals = [dict(zip(("group", "name", "code"), s, strict=True)) for s in _SIGNALS]
        result.append(
            {
                "id": _uuid4(rng),
                "name": f"Simulated webhook {i + 1}",
                "callbackUri": f"https://hooks.example.com/smartcar/{i + 1}",
                "errorCallbackUri": None if i % 2 else f"https://hooks.example.com/errors/{i + 1}",
                "isEnabled": i % 3 != 2,
                "autoSubscribe": i % 2 == 0,
                "triggers": rng.sample(signals, 1 + rng.randrange(2)),
                "data": rng.sample(signals, 1 + rng.randrange(3)),
                "createdAt": _format_instant(at, 0),
            }
        )
    return result


def generate_subscriptions(
    webhooks: Sequence[Mapping[str, Any]],
    connections: Sequence[Mapping[str, Any] | Connection],
    *,
    per_webhook: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Generate reproducible subscriptions of connected vehicles to webhooks (flat records).

    Args:
        webhooks: Flat webhook records.
        connections: The live or simulated connections to subscribe (test ones are skipped);
            when there are none, made-up vehicles are subscribed.
        per_webhook: Subscriptions per webhook (fewer if there are fewer connections).
        seed: Seed for the random generator.

    Returns:
        Flat subscription records (see `subscription_record`), newest first.
    """
    rng = random.Random(seed)  # noqa: S311 -- reproducible data, not secrets
    result = []
    for webhook in webhooks:
        count = min(per_webhook, len(connections)) if connections else per_webhook
        for index in rng.sample(range(len(connections)), count) if connections else [None] * count:
            if index is None:
                item = Connection(_uuid4(rng), _uuid4(rng), str(webhook["createdAt"]))
            else:
                given = connections[index]
                item = given if isinstance(given, Connection) else Connection.from_mapping(given)
            if item.mode not in V3_MODES:
                continue
            flat = item.v3_dict()
            created = max(instant(item.connected_at), instant(str(webhook["createdAt"])))
            created += rng.randrange(30 * 86400) * 1_000_000
            result.append(
                {
                    "id": _uuid4(rng),
                    "webhookId": str(webhook["id"]),
                    "userId": item.user_id,
                    "vehicleId": item.vehicle_id,
                    "mode": item.mode,
                    **{k: flat[k] for k in ("make", "model", "year", "powertrainType")},
                    "createdAt": _format_instant(created, 0),
                    "updatedAt": _format_instant(created + rng.randrange(86400) * 1_000_000, 0),
                }
            )
    result.sort(key=lambda record: (instant(record["createdAt"]), record["id"]), reverse=True)
    return result
