"""The simulator's data: connections, their order, generated data, the store and cursors.

Connections are kept per mode in ascending `SortKey` order next to their pre-encoded JSON
(`ConnectionStore`), so an unfiltered page costs a bisect plus `limit` rows whatever the data
size. Cursors (`CursorCodec`) are opaque, signed and bound to the query they page through.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii

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


@dataclass(frozen=True, slots=True)
class Connection:
    """One vehicle connection, with `connected_at` exactly as it is served."""

    user_id: str
    vehicle_id: str
    connected_at: str
    mode: str = "live"

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> Connection:
        """Build a connection from an API-shaped mapping (`userId`, `vehicleId`, ...).

        Args:
            data: A mapping with `userId`, `vehicleId`, `connectedAt` and optionally `mode`.

        Returns:
            The connection.

        Raises:
            ValueError: A key is missing, the mode is unknown or the timestamp is not ISO 8601.
        """
        try:
            connection = cls(
                str(data["userId"]),
                str(data["vehicleId"]),
                str(data["connectedAt"]),
                str(data.get("mode", "live")),
            )
        except KeyError as exc:
            raise ValueError(f"connection is missing {exc}: {dict(data)!r}") from None
        if connection.mode not in MODES:
            raise ValueError(f"unknown mode {connection.mode!r}")
        return connection

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
        self._index: dict[tuple[str, str], tuple[str, SortKey]] = {}
        latest: dict[tuple[str, str], Connection] = {}
        for data in connections:
            connection = Connection.from_mapping(data)
            latest[connection.user_id, connection.vehicle_id] = connection
        entries: dict[str, list[tuple[SortKey, bytes]]] = {mode: [] for mode in MODES}
        for pair, connection in latest.items():
            key = connection.sort_key
            entries[connection.mode].append((key, connection.to_json()))
            self._index[pair] = (connection.mode, key)
        for mode, rows in entries.items():
            rows.reverse()  # data usually comes newest first: make sorting nearly free
            rows.sort()
            self._keys[mode] = [key for key, _ in rows]
            self._rows[mode] = [row for _, row in rows]

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
        return True

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
