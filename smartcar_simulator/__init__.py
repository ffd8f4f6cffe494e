"""A local simulator of Smartcar's connections APIs: Management API v2.0 and API v3.

It serves generated or given connections over real HTTP on 127.0.0.1 the way Smartcar does.
v2.0 (`GET /v2.0/management/connections`): Basic auth, `limit`/`cursor`/`user_id`/
`vehicle_id`/`mode` parameters, newest-first keyset paging with opaque cursors, Smartcar error
bodies. v3 on the same port: client-credentials tokens from `POST /oauth2/token`, Bearer auth,
`GET /vehicle/v3/connections`, `GET /management/v3/webhooks` and
`GET /management/v3/subscriptions` as JSON:API documents with page-number (offset) paging and
JSON:API errors. Fault injection (`Faults`) for rate limits, server errors, broken bodies,
dropped connections, buggy cursors and hostile v3 documents applies to both faces, which share
one rate-limit bucket.

It is the project's test and demo tool, not part of the tap: the wheel ships the tap only, and
this package uses nothing but the standard library. Its modules:

- `data`: connections, their order (`SortKey`), `generate_connections`, the per-mode store,
  the signed cursors, the v3-only fields derived per (userId, vehicleId), and webhooks and
  subscriptions (`generate_webhooks`, `generate_subscriptions`);
- `faults`: the `Faults` knobs, the chaos picker, the rate-limit token bucket and the fault
  state the faces share;
- `v2`: the Management API v2.0 face (routing, auth, paging, error bodies);
- `v3`: the API v3 face: the OAuth token endpoint, Bearer auth, the JSON:API lists and errors;
- `server`: `SmartcarSimulator` (the HTTP server, its lifecycle and admin routes) and
  `RequestLog`;
- `__main__`: the command line.

In tests::

    with SmartcarSimulator(generate_connections(250)) as sim:
        requests.get(f"{sim.api_url}/management/connections", auth=("default", sim.token))

For v3::

    token = requests.post(sim.v3_token_url, data={"grant_type": "client_credentials",
        "client_id": sim.client_id, "client_secret": sim.client_secret}).json()["access_token"]
    requests.get(f"{sim.v3_vehicle_api_url}/connections", params={"page[size]": 100},
        headers={"Authorization": f"Bearer {token}"})

As a process: `python -m smartcar_simulator --connections 1000 --url-file F` (the v2 URL), or
`--settings-file F` (a JSON object of every URL and credential).
A separate process can then change it over HTTP (no auth, never under `/v2.0`):
`POST /_admin/connections` (a JSON list to add), `DELETE /_admin/connections?user_id=&vehicle_id=`,
`GET /_admin/requests` (the request log, token requests included), `DELETE /_admin/requests`
(clear it), `DELETE /_admin/tokens` (revoke every v3 access token),
`GET /_admin/faults` and `PUT /_admin/faults` (a JSON object of `Faults` fields; omitted ones
are reset to their defaults).
"""

from __future__ import annotations

from .data import (
    DEFAULT_START,
    MODES,
    V3_KEYS,
    V3_MODES,
    Connection,
    SortKey,
    generate_connections,
    generate_subscriptions,
    generate_webhooks,
    instant,
    subscription_record,
    webhook_record,
)
from .faults import Faults
from .server import RequestLog, SmartcarSimulator
from .v2 import CONNECTIONS_PATH
from .v3 import (
    TOKEN_PATH,
    V3_CONNECTIONS_PATH,
    V3_SUBSCRIPTIONS_PATH,
    V3_WEBHOOKS_PATH,
)

__all__ = [
    "CONNECTIONS_PATH",
    "DEFAULT_START",
    "MODES",
    "TOKEN_PATH",
    "V3_CONNECTIONS_PATH",
    "V3_KEYS",
    "V3_MODES",
    "V3_SUBSCRIPTIONS_PATH",
    "V3_WEBHOOKS_PATH",
    "Connection",
    "Faults",
    "RequestLog",
    "SmartcarSimulator",
    "SortKey",
    "generate_connections",
    "generate_subscriptions",
    "generate_webhooks",
    "instant",
    "subscription_record",
    "webhook_record",
]
