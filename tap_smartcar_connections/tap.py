"""The tap: settings, validation, state checks and the command line."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import os
import re
import signal
import sys
import typing as t
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import click
import jsonschema
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.configuration._dict_config import parse_environment_config
from singer_sdk.helpers._classproperty import classproperty
from singer_sdk.helpers.capabilities import PluginCapabilities
from typing_extensions import override

from tap_smartcar_connections.client import (
    MODES,
    ConnectionsStream,
    DownstreamError,
    SmartcarError,
    Writer,
    normalize_timestamp,
)
from tap_smartcar_connections.logs import demote_sdk_chatter, records_are_parsed
from tap_smartcar_connections.transport import install_log_redaction, redact, register_secret
from tap_smartcar_connections.v2 import V2ConnectionsStream
from tap_smartcar_connections.v3 import (
    AccessToken,
    SubscriptionsStream,
    V3ConnectionsStream,
    WebhooksStream,
)

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.about import AboutInfo
    from singer_sdk.helpers.capabilities import CapabilitiesEnum
    from singer_sdk.streams import Stream


class ConfigError(SmartcarError):
    """The configuration is invalid; raised before any request is made."""


class StateError(SmartcarError):
    """The state (bookmarks) given to the tap cannot be used."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; a BaseException so that no retry loop swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


API_VERSIONS = ("v2", "v3")

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
        th.IntegerType(minimum=1),
        default=310,
        title="Request Timeout",
        description="Seconds to wait for one response (Smartcar's SDKs allow about 310).",
    ),
    th.Property(
        "max_retry_seconds",
        th.IntegerType(minimum=0),
        default=600,
        title="Max Retry Seconds",
        description="How long one request keeps being retried (429s, 5xx, timeouts; a broken "
        "body at most 3 times) before the run fails.",
    ),
    th.Property(
        "max_requests_per_minute",
        th.IntegerType(minimum=1),
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


class TapSmartcarConnections(Tap):
    """Extract every vehicle connection of a Smartcar application, from API v2 or v3.

    Reads Smartcar API v2, the Management API v2.0 (`GET /management/connections`, with the
    application's management token; the default) or, with `api_version: v3`, Smartcar API v3
    (`GET /connections`, with the client credentials) and emits the `connections` stream: who
    (`userId`) connected which vehicle (`vehicleId`), when (`connectedAt`) and in which `mode`;
    under v3 also the connection's id, permissions and the vehicle's make, model, year and
    powertrain, plus the `webhooks` and `subscriptions` streams. Incremental by default, with
    one bookmark per mode: a run reads only the newest pages, down to the bookmark. Select
    FULL_TABLE (optionally with ACTIVATE_VERSION) to also remove disconnected vehicles.
    """

    name = "tap-smartcar-connections"
    message_writer_class = Writer
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        capability for capability in Tap.capabilities if capability != PluginCapabilities.BATCH
    ]
    """The SDK's tap capabilities without BATCH.

    In BATCH mode the SDK writes a batch's message only after its records were consumed, so a
    full refresh's ACTIVATE_VERSION, sent after the last record, would precede the last batch.
    Connections are small rows; RECORD messages carry them well.
    """

    config_jsonschema = SETTINGS.to_dict()

    @override
    def discover_streams(self) -> list[Stream]:
        """`connections` under API v2; under v3 also `webhooks` and `subscriptions`."""
        if self.config.get("api_version") != "v3":
            return [V2ConnectionsStream(self)]
        token = AccessToken()
        return [
            V3ConnectionsStream(self, token),
            WebhooksStream(self, token),
            SubscriptionsStream(self, token),
        ]

    @classmethod
    @override
    def _get_about_info(cls) -> AboutInfo:
        """Give `--about` the docstring as one line: the SDK's layouts break on several."""
        info = super()._get_about_info()
        return dataclasses.replace(info, description=" ".join((cls.__doc__ or "").split()))

    @override
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Fill in defaults, then validate, naming settings but never echoing their values.

        The SDK's messages quote the offending value, even for the secret token, and do not
        check `start_date`'s format; it also leaves defaults out of `config`.

        Raises:
            ConfigError: If `raise_errors` and the config is invalid.
        """
        schema = copy.deepcopy(self.config_jsonschema)
        self.append_builtin_config(schema)
        config = self._config = {**self._config}
        for name, spec in schema["properties"].items():
            if "default" in spec:
                config.setdefault(name, copy.deepcopy(spec["default"]))
        problems = [
            _explain(error) for error in jsonschema.Draft7Validator(schema).iter_errors(config)
        ]
        problems += _check_values(config)
        if config.get("modes") == []:
            problems.append("setting 'modes' must name at least one of live, simulated, test")
        if "batch_config" in config:
            problems.append("setting 'batch_config' is not supported: remove it")
        if problems and raise_errors:
            msg = f"Invalid configuration: {'; '.join(problems)}. Fix the setting and rerun"
            raise ConfigError(msg)
        for problem in problems:
            self.logger.warning("Invalid configuration: %s", problem)
        return problems

    @classproperty
    def _env_var_config(cls) -> dict[str, t.Any]:
        """Settings from `TAP_SMARTCAR_CONNECTIONS_*`; the SDK's `int()` fails with a traceback.

        Raises:
            ConfigError: Naming the variable whose value is not an integer.
        """
        schema = copy.deepcopy(cls.config_jsonschema)
        cls.append_builtin_config(schema)
        try:
            return parse_environment_config(schema, cls._env_var_prefix)
        except ValueError:
            bad = [
                f"{cls._env_var_prefix}{name.upper()}"
                for name, spec in schema["properties"].items()
                if "integer" in spec.get("type", ())
                and not os.environ.get(f"{cls._env_var_prefix}{name.upper()}", "0")
                .strip()
                .lstrip("-")
                .isdecimal()
            ]
            msg = f"Invalid configuration: {' and '.join(bad) or 'a variable'} must be an integer"
            raise ConfigError(msg) from None

    @classmethod
    @override
    def get_singer_command(cls) -> click.Command:
        """The SDK's command, with an epilog saying what the tap does and how it is used."""
        command = super().get_singer_command()
        command.epilog = HELP_EPILOG
        return command

    @override
    def load_state(self, state: dict[str, t.Any]) -> None:
        """Load state, refusing bookmarks that are not timestamps.

        A bad bookmark would otherwise crash mid-run or, worse, silently re-read history.
        """
        check_state(state)
        super().load_state(state)

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """Stop at once with a non-zero exit; the SDK exits 0, making a killed run look fine.

        No STATE is written here: the last one already emitted is safe to resume from, and
        writing from a signal handler could split a half-written line.
        """
        raise Interrupted(signum)


HELP_EPILOG = """\b
Extracts every vehicle connection of a Smartcar application as the `connections`
stream, incrementally with one bookmark per mode, from either API version:
  API v2 (the default): the Management API v2.0, with management_token;
  API v3 (api_version v3): with client_id and client_secret; adds the vehicle's
  details and the `webhooks` and `subscriptions` streams.
The settings are listed by --about (table in README.md, "Settings").

\b
Usual commands:
  tap-smartcar-connections --about --format=markdown    settings and capabilities
  tap-smartcar-connections --config config.json --discover > catalog.json
  tap-smartcar-connections --config config.json --test  check credentials and URLs
  tap-smartcar-connections --config config.json --state state.json > out.jsonl
"""

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
URL_SETTINGS = ("api_url", "v3_token_url", "v3_vehicle_api_url", "v3_management_api_url")


def _check_values(config: dict[str, t.Any]) -> list[str]:
    """What the JSON schema cannot say about the token, `api_url` and `start_date`.

    Also registers the token for redaction, and normalises `start_date` to the bookmarks' own
    form, because the SDK compares the two.
    """
    problems = []
    install_log_redaction()  # also when the tap is used as a library, not only by `main`
    for name in ("management_token", "client_secret"):
        if isinstance(config.get(name), str):
            register_secret(config[name])
    version = str(config.get("api_version"))
    needed = {"v2": ("management_token",), "v3": ("client_id", "client_secret")}.get(version, ())
    for name in needed:
        if config.get(name) is None:
            where = (
                " (Smartcar Dashboard > API Credentials)"
                if version == "v3"
                else " (or set api_version to v3 to use client_id and client_secret)"
                if config.get("client_id") or config.get("client_secret")
                else ""
            )
            problems.append(f"setting '{name}' is required for api_version {version}{where}")
        elif isinstance(config[name], str) and not config[name].strip():
            problems.append(f"setting '{name}' is empty")
    if version == "v3" and "test" in (config.get("modes") or ()):
        problems.append(
            "setting 'modes' cannot include test under api_version v3 (v3 has no test mode)"
        )
    for name in URL_SETTINGS:
        if isinstance(config.get(name), str) and (problem := _check_api_url(config[name])):
            problems.append(f"setting '{name}' {problem}")
    if isinstance(config.get("start_date"), str):
        try:
            config["start_date"] = normalize_timestamp(config["start_date"])
        except ValueError:
            problems.append("setting 'start_date' must be an ISO 8601 date-time")
        else:
            if config["start_date"] > normalize_timestamp(datetime.now(UTC).isoformat()):
                problems.append("setting 'start_date' is in the future")
    return problems


def _check_api_url(url: str) -> str | None:
    """Say what is wrong with `api_url`, or None when it is usable.

    An `http://` URL would send the token in cleartext, so it is only accepted for a loopback
    host (the bundled simulator).
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
        return host.lower() in LOOPBACK_NAMES


def _explain(error: jsonschema.ValidationError) -> str:
    """Describe one schema violation by setting name, never by value (it may be a secret)."""
    path = list(error.absolute_path)
    expected: t.Any = error.validator_value
    if error.validator == "required":
        missing = [
            name for name in expected if name not in t.cast("dict[str, t.Any]", error.instance)
        ]
        return f"setting '{', '.join(missing)}' is required"
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


def check_state(state: t.Any) -> None:
    """Check that `state` has the shape the SDK expects and that bookmarks are timestamps.

    Raises:
        StateError: Naming the first part that is wrong.
    """
    if not isinstance(state, dict):
        msg = "the state is not a JSON object"
        raise StateError(msg)
    bookmarks = {} if state.get("bookmarks") is None else state["bookmarks"]
    if not isinstance(bookmarks, dict):
        msg = "its 'bookmarks' is not a JSON object"
        raise StateError(msg)
    for stream, entry in bookmarks.items():
        if not isinstance(entry, dict):
            msg = f"the bookmarks of stream {json.dumps(stream)} are not a JSON object"
            raise StateError(msg)
    stream_state = bookmarks.get(ConnectionsStream.name) or {}
    partitions = stream_state.get("partitions", [])
    if not isinstance(partitions, list) or not all(
        isinstance(p, dict) and isinstance(p.get("context", {}), dict) for p in partitions
    ):
        msg = "the connections 'partitions' is not a list of objects with a 'context' object"
        raise StateError(msg)
    for entry in [stream_state, *partitions]:
        value = entry.get("replication_key_value")
        if value is None:
            continue
        try:
            normalize_timestamp(value)
        except ValueError:
            where = json.dumps(entry.get("context") or "stream")
            shown = json.dumps(value)[:80]
            msg = f"the connections bookmark for {where} is {shown}, not a timestamp"
            raise StateError(msg) from None


def _check_state_file(argv: list[str]) -> list[str]:
    """Fail with the file's name when `--state` is not readable JSON with valid bookmarks.

    The SDK would crash with a JSON traceback that does not say which file was wrong.

    Returns:
        `argv` without a `--state` whose file is empty: what `target > state.json` leaves when
        no STATE came, which means no state.
    """
    kept: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        path = arg.split("=", 1)[1] if arg.startswith("--state=") else None
        if arg == "--state" and index + 1 < len(argv):
            path = argv[index + 1]
        if path is None:
            kept.append(arg)
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
            if not text.strip():
                skip = arg == "--state"
                continue
            check_state(json.loads(text))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        except (ValueError, RecursionError):
            reason = "it is not valid JSON (UTF-8)"
        except StateError as exc:
            reason = str(exc)
        else:
            kept.append(arg)
            continue
        msg = (
            f"cannot use state file {path}: {reason}. Fix it, or clear the state "
            "(meltano state clear) to re-sync from scratch"
        )
        raise StateError(msg)
    return kept


def main() -> None:
    """Run the tap's command line, ending expected failures with one line and a non-zero exit."""
    install_log_redaction()
    argv = sys.argv[1:]
    name = TapSmartcarConnections.name
    demote_sdk_chatter(name)
    try:
        sys.argv[1:] = _check_state_file(argv)
        TapSmartcarConnections.cli()
    except SmartcarError as exc:
        TapSmartcarConnections.logger.debug("Failure details", exc_info=True)
        _finish(f"{name}: error: {exc}", exc.exit_code, downstream=isinstance(exc, DownstreamError))
    except Interrupted as exc:
        _finish(
            f"{name}: stopped by {exc}; the last STATE emitted is safe to resume from",
            exc.exit_code,
        )
    except SystemExit as exc:
        # The SDK's --test prints no verdict; a failure has already raised SmartcarError.
        if exc.code in {0, None} and ("--test" in argv or "--test=all" in argv):
            print(
                f"{name}: connection test passed: the API accepted the credentials",
                file=sys.stderr,
            )
        raise


def _finish(line: str, exit_code: int, *, downstream: bool = False) -> t.NoReturn:
    """Print the run's last line and exit; where stderr is parsed as records, log it as ERROR.

    `meltano run` shows a plain stderr line at INFO: only a structured record reaches it as an
    error. `meltano config test` prints its last line raw: there it stays a plain line.
    """
    line = redact(line)
    if not downstream:
        try:
            sys.stdout.flush()
        except OSError:
            downstream = True
    if downstream:
        # Nothing more can be written there; keep interpreter shutdown from trying again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if records_are_parsed():
        TapSmartcarConnections.logger.error("%s", line)
    else:
        print(line, file=sys.stderr)
    sys.exit(exit_code)
