"""A local simulator of Smartcar's Management API `GET /v2.0/management/connections`.

It serves generated or given connections over real HTTP on 127.0.0.1 the way Smartcar does:
Basic auth, `limit`/`cursor`/`user_id`/`vehicle_id`/`mode` parameters, newest-first keyset
paging with opaque cursors, Smartcar error bodies, and fault injection (`Faults`) for rate
limits, server errors, broken bodies, dropped connections and buggy cursors.

It is the project's test and demo tool, not part of the tap: the wheel ships the tap only, and
this package uses nothing but the standard library. Its modules:

- `data`: connections, their order (`SortKey`), `generate_connections`, the per-mode store
  and the signed cursors;
- `faults`: the `Faults` knobs, the chaos picker and the rate-limit token bucket;
- `v2`: the Management API v2.0 face (routing, auth, paging, error bodies);
- `server`: `SmartcarSimulator` (the HTTP server, its lifecycle and admin routes) and
  `RequestLog`;
- `__main__`: the command line.

In tests::

    with SmartcarSimulator(generate_connections(250)) as sim:
        requests.get(f"{sim.api_url}/management/connections", auth=("default", sim.token))

As a process: `python -m smartcar_simulator --connections 1000 --url-file F`.
A separate process can then change it over HTTP (no auth, never under `/v2.0`):
`POST /_admin/connections` (a JSON list to add), `DELETE /_admin/connections?user_id=&vehicle_id=`,
`GET /_admin/requests` (the request log), `DELETE /_admin/requests` (clear it),
`GET /_admin/faults` and `PUT /_admin/faults` (a JSON object of `Faults` fields; omitted ones
are reset to their defaults).
"""

from __future__ import annotations

from .data import DEFAULT_START, MODES, Connection, SortKey, generate_connections, instant
from .faults import Faults
from .server import RequestLog, SmartcarSimulator
from .v2 import CONNECTIONS_PATH

__all__ = [
    "CONNECTIONS_PATH",
    "DEFAULT_START",
    "MODES",
    "Connection",
    "Faults",
    "RequestLog",
    "SmartcarSimulator",
    "SortKey",
    "generate_connections",
    "instant",
]
