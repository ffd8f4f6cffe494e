"""The tap's settings: their schema, and the typed `Settings` a run reads them into, once.

`read_settings` is a pure function: it fills in defaults, checks every value (naming the setting,
never echoing a value: it may be a secret) and returns the settings with the problems found.
Registering secrets, logging and raising are the tap's to do with the result.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import typing as t
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import jsonschema
from singer_sdk import typing as th

from tap_smartcar_connections.timestamps import normalize_timestamp, stamp_of

API_VERSIONS = ("v2", "v3")
MODES = ("live", "simulated", "test")
MAX_REQUEST_TIMEOUT = 3600
"""Seconds; more would only hide a dead connection (and overflow the socket layer's clocks)."""
MAX_RETRY_SECONDS = 86_400
MAX_REQUESTS_PER_MINUTE = 6000

SETTINGS = th.PropertiesList(
    th.Property(
        "api_version",
        th.StringType(allowed_values=list(API_VERSIONS)),
        default="v2",
        title="API Version",
        description="Smartcar API to read: v2 (Management API v2.0, with management_token) "
        "or v3 (with client_id and client_secret; adds vehicle details and the webhooks and "
        "subscriptions streams). Each mode's bookmark belongs to one version: switching "
        "reads each mode afresh, once.",
    ),
    th.Property(
        "management_token",
        th.StringType,
        secret=True,
        title="Management Token",
        description="API v2: the application's Management API token (Smartcar Dashboard > "
        "Configuration); required when api_version is v2. Sent only as HTTP Basic auth "
        "`default:<token>`.",
    ),
    th.Property(
        "api_url",
        th.StringType,
        default="https://management.smartcar.com/v2.0",
        title="API URL",
        description="API v2: base URL of the Smartcar Management API v2.0.",
    ),
    th.Property(
        "client_id",
        th.StringType,
        title="Client ID",
        description="API v3: the application's Client ID (Smartcar Dashboard > API "
        "Credentials); required when api_version is v3.",
    ),
    th.Property(
        "client_secret",
        th.StringType,
        secret=True,
        title="Client Secret",
        description="API v3: a Client Secret of the application (Smartcar Dashboard > API "
        "Credentials; shown once when created); required when api_version is v3. Sent only "
        "to v3_token_url.",
    ),
    th.Property(
        "v3_token_url",
        th.StringType,
        default="https://iam.smartcar.com/oauth2/token",
        title="API v3 Token URL",
        description="API v3: where the client credentials are exchanged for an access token.",
    ),
    th.Property(
        "v3_vehicle_api_url",
        th.StringType,
        default="https://vehicle.api.smartcar.com/v3",
        title="API v3 Vehicle API URL",
        description="API v3: base URL of the Vehicle API, which lists connections.",
    ),
    th.Property(
        "v3_management_api_url",
        th.StringType,
        default="https://management.api.smartcar.com/v3",
        title="API v3 Management API URL",
        description="API v3: base URL of the Management API, which lists webhooks and "
        "subscriptions.",
    ),
    th.Property(
        "start_date",
        th.DateTimeType,
        title="Start Date",
        description="ISO 8601 date-time; connections made before it are skipped when a "
        "mode has no bookmark yet.",
    ),
    th.Property(
        "modes",
        th.ArrayType(th.StringType(allowed_values=list(MODES))),
        default=["live", "simulated"],
        title="Modes",
        description="Connection modes to extract (live, simulated, test; API v3 has no test "
        "mode). Each mode is requested separately and keeps its own bookmark.",
    ),
    th.Property(
        "user_id",
        th.StringType,
        title="User ID",
        description="Only extract connections of this Smartcar user ID.",
    ),
    th.Property(
        "vehicle_id",
        th.StringType,
        title="Vehicle ID",
        description="Only extract connections of this vehicle ID.",
    ),
    th.Property(
        "page_size",
        th.IntegerType(minimum=1, maximum=100),
        default=100,
        title="Page Size",
        description="Connections per request (1 to 100). The API's own default of 10 "
        "would cost ten times the requests.",
    ),
    th.Property(
        "request_timeout",
        th.IntegerType(minimum=1, maximum=MAX_REQUEST_TIMEOUT),
        default=310,
        title="Request Timeout",
        description="Seconds to wait for one response (Smartcar's SDKs allow about 310).",
    ),
    th.Property(
        "max_retry_seconds",
        th.IntegerType(minimum=0, maximum=MAX_RETRY_SECONDS),
        default=600,
        title="Max Retry Seconds",
        description="How long one request keeps being retried (429s, 5xx, timeouts; a broken "
        "body at most 3 times) before the run fails.",
    ),
    th.Property(
        "max_requests_per_minute",
        th.IntegerType(minimum=1, maximum=MAX_REQUESTS_PER_MINUTE),
        title="Max Requests Per Minute",
        description="Client-side pace, so a long sync stays under Smartcar's rate "
        "limit instead of bouncing off it. Unset: no pacing.",
    ),
    th.Property(
        "emit_activate_version_messages",
        th.BooleanType,
        default=False,
        title="Emit ACTIVATE_VERSION Messages",
        description="In FULL_TABLE replication, send ACTIVATE_VERSION after a complete "
        "read, so the target removes connections that are gone.",
    ),
)
"""The tap's own settings (the SDK appends its built-in ones to `config_jsonschema`)."""

URL_SETTINGS = ("api_url", "v3_token_url", "v3_vehicle_api_url", "v3_management_api_url")
"""The settings that hold a URL: each is checked the same way."""
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
_CREDENTIALS = {"v2": ("management_token",), "v3": ("client_id", "client_secret")}


@dataclass(frozen=True)
class Settings:
    """Every setting the tap reads, typed and checked; the SDK's own stay in `config`."""

    api_version: str
    management_token: str
    api_url: str
    client_id: str
    client_secret: str
    v3_token_url: str
    v3_vehicle_api_url: str
    v3_management_api_url: str
    start_date: str
    """Normalised like a bookmark; "" when unset (read from the beginning)."""
    modes: tuple[str, ...]
    user_id: str | None
    vehicle_id: str | None
    page_size: int
    request_timeout: float
    max_retry_seconds: float
    max_requests_per_minute: int | None
    emit_activate_version_messages: bool

    @property
    def secrets(self) -> tuple[str, ...]:
        """The configured credentials that no output may show."""
        return tuple(secret for secret in (self.management_token, self.client_secret) if secret)

    def partitions(self) -> list[dict[str, t.Any]]:
        """One partition per configured mode, with the `user_id` and `vehicle_id` filters.

        The filter keys are named like the record fields they restrict, so the SDK finds them
        already present in every record (it adds a partition's keys to records that lack them).
        A bookmark is only valid for the filter it was made under, so each filter has its own.
        """
        filters = {
            name: value
            for name, value in (("userId", self.user_id), ("vehicleId", self.vehicle_id))
            if value
        }
        return [{"mode": mode, **filters} for mode in self.modes]


def config_schema() -> dict[str, t.Any]:
    """The settings' JSON schema (a copy: the SDK appends its built-in settings to it)."""
    return copy.deepcopy(SETTINGS.to_dict())


def read_settings(
    config: t.Mapping[str, t.Any], schema: dict[str, t.Any]
) -> tuple[dict[str, t.Any], Settings, list[str]]:
    """Fill in defaults, check every value and read the settings, without side effects.

    Args:
        config: The configuration as given (files, environment).
        schema: The full settings schema, the SDK's built-in settings included.

    Returns:
        The configuration with defaults filled in (what the SDK keeps as `config`), the typed
        settings (a default in place of any invalid value) and the problems found, each
        naming its setting.
    """
    filled = copy.deepcopy(dict(config))
    for name, spec in schema["properties"].items():
        if "default" in spec:
            filled.setdefault(name, copy.deepcopy(spec["default"]))
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(filled))
    problems = [_explain(error) for error in errors]
    invalid = {error.absolute_path[0] for error in errors if error.absolute_path}
    values = {
        name: (spec.get("default") if name in invalid else filled.get(name, spec.get("default")))
        for name, spec in SETTINGS.to_dict()["properties"].items()
    }
    start_date, problem = _start_date(values["start_date"])
    if start_date:
        filled["start_date"] = start_date  # the SDK compares it with bookmarks, as a string
    problems += _check_values(values, invalid) + ([problem] if problem else [])
    if "batch_config" in filled:
        problems.append("setting 'batch_config' is not supported: remove it")
    settings = Settings(
        api_version=values["api_version"],
        management_token=values["management_token"] or "",
        api_url=values["api_url"],
        client_id=values["client_id"] or "",
        client_secret=values["client_secret"] or "",
        v3_token_url=values["v3_token_url"],
        v3_vehicle_api_url=values["v3_vehicle_api_url"],
        v3_management_api_url=values["v3_management_api_url"],
        start_date=start_date,
        modes=tuple(dict.fromkeys(values["modes"])),
        user_id=values["user_id"] or None,
        vehicle_id=values["vehicle_id"] or None,
        page_size=values["page_size"],
        request_timeout=float(values["request_timeout"]),
        max_retry_seconds=float(values["max_retry_seconds"]),
        max_requests_per_minute=values["max_requests_per_minute"],
        emit_activate_version_messages=values["emit_activate_version_messages"],
    )
    return filled, settings, problems


def _check_values(values: dict[str, t.Any], invalid: set[t.Any]) -> list[str]:
    """What the JSON schema cannot say: credentials per API version, modes, URLs.

    A setting the schema already refused (`invalid`) is not named twice.
    """
    problems = []
    version = str(values["api_version"])
    for name in _CREDENTIALS.get(version, ()):
        if name in invalid:
            continue
        if values[name] is None:
            where = (
                " (Smartcar Dashboard > API Credentials)"
                if version == "v3"
                else " (or set api_version to v3 to use client_id and client_secret)"
                if values["client_id"] or values["client_secret"]
                else ""
            )
            problems.append(f"setting '{name}' is required for api_version {version}{where}")
        elif not values[name].strip():
            problems.append(f"setting '{name}' is empty")
    if values["modes"] == []:
        problems.append("setting 'modes' must name at least one of live, simulated, test")
    if version == "v3" and "test" in values["modes"]:
        problems.append(
            "setting 'modes' cannot include test under api_version v3 (v3 has no test mode)"
        )
    for name in URL_SETTINGS:
        if name not in invalid and (problem := check_url(values[name])):
            problems.append(f"setting '{name}' {problem}")
    return problems


def _start_date(value: str | None) -> tuple[str, str | None]:
    """`start_date` in the bookmarks' own form (the SDK compares the two), and any problem."""
    if value is None:
        return "", None
    try:
        start = normalize_timestamp(value)
    except ValueError:
        return "", "setting 'start_date' must be an ISO 8601 date-time"
    if start > stamp_of(datetime.now(UTC)):
        return "", "setting 'start_date' is in the future"
    return start, None


def check_url(url: str) -> str | None:
    """Say what is wrong with a URL setting, or None when it is usable.

    An `http://` URL would send the credentials in cleartext, so it is only accepted for a
    loopback host (the bundled simulator).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (check the host and port)"
    checks = [
        (
            any(c.isspace() for c in url) or not url.isprintable(),
            "must not contain spaces or control characters",
        ),
        (
            parts.scheme not in {"http", "https"} or not parts.hostname,
            "must be an https:// URL with a host",
        ),
        (
            bool(parts.query or parts.fragment) or url.endswith(("?", "#")),
            "must not have a query or fragment",
        ),
        (
            parts.username is not None or parts.password is not None,
            "must not contain credentials: they go in their own settings",
        ),
        (port == 0, "has an invalid port"),
        (not _is_host(parts.hostname or ""), "has an invalid host name"),
        (
            parts.scheme == "http" and not _is_loopback(parts.hostname or ""),
            "must use https:// (http:// sends credentials in cleartext; only a loopback host "
            "such as the simulator may use it)",
        ),
    ]
    return next((problem for failed, problem in checks if failed), None)


def _is_host(host: str) -> bool:
    """Whether `host` is an IP address or a DNS name urllib3 can connect to."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            labels = host.encode("idna").decode("ascii").rstrip(".").split(".")
        except UnicodeError:
            return False
        return all(re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", label) for label in labels)
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in _LOOPBACK_NAMES


def _explain(error: jsonschema.ValidationError) -> str:
    """Describe one schema violation by setting name, never by value (it may be a secret)."""
    path = list(error.absolute_path)
    expected: t.Any = error.validator_value
    where = f"setting '{path[0]}'" if path else "the configuration"
    if len(path) > 1:
        where += f" item {int(path[1]) + 1}"
    match error.validator:
        case "type":
            types = [expected] if isinstance(expected, str) else expected
            reason = f"must be of type {' or '.join(types)}"
        case "minimum":
            reason = f"must be at least {expected}"
        case "maximum":
            reason = f"must be at most {expected}"
        case "enum":
            reason = f"must be one of {', '.join(map(str, expected))}"
        case _:
            reason = f"is invalid ({error.validator})"
    return f"{where} {reason}"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def environment_config(
    schema: dict[str, t.Any], prefix: str, environ: t.Mapping[str, str] = os.environ
) -> tuple[dict[str, t.Any], list[str]]:
    """Settings from `<prefix><SETTING>` variables (`--config ENV`), and what is wrong with them.

    The SDK's own parsing ends in a traceback on a bad integer, takes any word but a few for
    false, and reads bad JSON as a list of one string. Here each bad value is named.

    Returns:
        The settings found, and one problem per variable that could not be read.
    """
    config: dict[str, t.Any] = {}
    problems: list[str] = []
    for name, spec in schema["properties"].items():
        variable = prefix + name.upper().replace("-", "_")
        if variable not in environ:
            continue
        kinds = spec.get("type", "string")
        kinds = {kinds} if isinstance(kinds, str) else set(kinds)
        value, problem = _from_environment(environ[variable], kinds)
        if problem:
            problems.append(f"{variable} {problem}")
        else:
            config[name] = value
    return config, problems


def _from_environment(raw: str, kinds: set[str]) -> tuple[t.Any, str | None]:
    """One variable's value read as the setting's JSON type, or the problem."""
    text = raw.strip()
    if "integer" in kinds:
        number = re.fullmatch(r"-?[0-9]{1,18}", text, re.ASCII)
        return (int(text), None) if number else (None, "must be an integer")
    if "boolean" in kinds:
        known = text.lower() in _TRUE | _FALSE
        return (text.lower() in _TRUE, None) if known else (None, "must be true or false")
    if "array" in kinds and not text.startswith("["):
        return [part.strip() for part in text.split(",") if part.strip()], None  # a,b,c
    if kinds & {"array", "object"}:
        return _json_from_environment(text, "array" if "array" in kinds else "object")
    return raw, None


def _json_from_environment(text: str, wanted: str) -> tuple[t.Any, str | None]:
    """A JSON array or object from a variable, or the problem."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "is not valid JSON"
    if not isinstance(value, list if wanted == "array" else dict):
        return None, f"must be a JSON {wanted}"
    return value, None
