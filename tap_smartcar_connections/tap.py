"""The tap: its settings read once, its run, its streams per API version, its state checked.

Under API v2 (`api_version: v2`, the default) the tap reads Smartcar's Management API v2.0
(`GET /management/connections`, with the application's management token); under v3, Smartcar
API v3 (`GET /connections`, with the client credentials), which adds the connection's id,
permissions and the vehicle's make, model, year and powertrain, plus the `webhooks` and
`subscriptions` streams. `connections` is incremental by default, with one bookmark per mode:
a run reads only the newest pages, down to the bookmark. FULL_TABLE (optionally with
ACTIVATE_VERSION) also removes disconnected vehicles.
"""

from __future__ import annotations

import copy
import typing as t

from singer_sdk import Tap
from singer_sdk.helpers.capabilities import PluginCapabilities
from typing_extensions import override

from tap_smartcar_connections.errors import ConfigError, interrupt
from tap_smartcar_connections.policy import Clock
from tap_smartcar_connections.redaction import Redactor, install_log_redaction
from tap_smartcar_connections.settings import config_schema, environment_config, read_settings
from tap_smartcar_connections.state import check_state
from tap_smartcar_connections.streams import Run, Writer
from tap_smartcar_connections.token import AccessToken
from tap_smartcar_connections.v2 import V2ConnectionsStream
from tap_smartcar_connections.v3 import SubscriptionsStream, V3ConnectionsStream, WebhooksStream

if t.TYPE_CHECKING:
    from types import FrameType

    import click
    from singer_sdk.helpers.capabilities import CapabilitiesEnum
    from singer_sdk.io_base import GenericSingerWriter
    from singer_sdk.streams import Stream

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


class TapSmartcarConnections(Tap):
    """Extract every vehicle connection of a Smartcar application, from API v2 or v3."""

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
    config_jsonschema = config_schema()
    clock_class: t.ClassVar[type[Clock]] = Clock
    """The run's clock; tests replace it to skip the waits."""

    def __init__(
        self,
        *,
        config: dict[str, t.Any] | None = None,
        catalog: t.Any = None,
        state: t.Any = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        setup_mapper: bool = True,
        message_writer: GenericSingerWriter[t.Any, t.Any] | None = None,
    ) -> None:
        """Read the settings once, start the run, then let the SDK build the tap around it.

        The settings are read and checked here, not by the SDK: its messages quote the
        offending value (even a secret), it checks no `start_date` format, leaves defaults out
        of `config`, and its `--config ENV` parsing ends in a traceback on a bad integer.

        Raises:
            ConfigError: If `validate_config` and a setting is wrong, naming each such setting.
        """
        schema = copy.deepcopy(self.config_jsonschema)
        self.append_builtin_config(schema)
        given, problems = dict(config or {}), list[str]()
        if parse_env_config:
            prefix = f"{self.name.upper().replace('-', '_')}_"
            found, problems = environment_config(schema, prefix)
            given.update(found)
        filled, self.settings, more = read_settings(given, schema)
        problems += more
        if problems and validate_config:
            msg = f"Invalid configuration: {'; '.join(problems)}. Fix the setting and rerun"
            raise ConfigError(msg)
        for problem in problems:
            self.logger.warning("Invalid configuration: %s", problem)
        self.redactor = Redactor(self.settings.secrets)
        install_log_redaction(self.redactor)
        self.run = Run.start(self.settings, self.clock_class(), self.redactor, self.logger)
        super().__init__(
            config=filled,
            catalog=catalog,
            state=state,
            parse_env_config=False,
            validate_config=False,
            setup_mapper=setup_mapper,
            message_writer=message_writer,
        )

    @override
    def discover_streams(self) -> list[Stream]:
        """`connections` under API v2; under v3 also `webhooks` and `subscriptions`."""
        if self.settings.api_version != "v3":
            return [V2ConnectionsStream(self, self.run)]
        token = AccessToken(self.run, f"{self.name}/{self.plugin_version}")
        return [
            V3ConnectionsStream(self, self.run, token),
            WebhooksStream(self, self.run, token),
            SubscriptionsStream(self, self.run, token),
        ]

    @override
    def load_state(self, state: dict[str, t.Any]) -> None:
        """Load state, refusing one whose shape or bookmarks are wrong (`state.check_state`)."""
        check_state(state)
        super().load_state(state)

    @classmethod
    @override
    def get_singer_command(cls) -> click.Command:
        """The SDK's command, with an epilog saying what the tap does and how it is used."""
        command = super().get_singer_command()
        command.epilog = HELP_EPILOG
        return command

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """Stop at once with a non-zero exit; the SDK exits 0, making a killed run look fine.

        The SDK installs this for SIGTERM and SIGINT (`_setup_signal_handlers`) in place of
        the command line's own handler, which does the same (`errors.interrupt`) before the
        tap exists. Nothing is written from here (a signal handler could split a
        half-written line): the command line writes the last STATE once more when the run
        has unwound, because some targets (target-jsonl 0.1.4) forget a STATE that RECORDs
        followed, and would resume from an older one.
        """
        writer = self.message_writer
        interrupt(signum, frame, writer.repeat_last_state if isinstance(writer, Writer) else None)
