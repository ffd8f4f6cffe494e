"""What the tap's log shows a person: the SDK's bookkeeping at DEBUG, the final error readable.

At INFO the SDK logs a METRIC line for every request (15 to 22 in a small run) and a note
about environment variables, which drown the lines a person needs: what is read, progress,
what was loaded, and warnings. Those records are demoted to DEBUG, where they stay available
(`LOGLEVEL=DEBUG`, or `meltano --log-level=debug`, which shows them as Meltano's metrics).
"""

from __future__ import annotations

import logging
import os

from singer_sdk.metrics import METRICS_LOGGER_NAME

DEMOTED_MESSAGES = frozenset(
    {"Skipping parse of env var settings...", "Parsing env var for settings config..."}
)
"""The SDK's INFO notes on its tap logger about a choice the tap's caller made, not the run."""


class _DemoteToDebug(logging.Filter):
    """Turn a logger's INFO records (all, or those with given messages) into DEBUG records.

    A logger's level is checked before its filters run, and the SDK resets the metrics logger's
    level to the tap's after any logging config is loaded; a filter is what stays in place.
    Filters may change the record they pass on (the logging module documents it).
    """

    def __init__(self, messages: frozenset[str] | None = None) -> None:
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a matching INFO record; keep it only when DEBUG is logged at all."""
        if record.levelno != logging.INFO:
            return True
        if self.messages is not None and not (
            isinstance(record.msg, str) and record.msg in self.messages
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return debug_is_logged()


def debug_is_logged() -> bool:
    """Whether DEBUG records are logged at all, and so the demoted ones shown.

    A metric the tap logs itself is not even made when it would be dropped: every log record is
    redacted (formatted) as it is made, which would cost more than the request it measures.
    """
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def demote_sdk_chatter(tap_logger_name: str) -> None:
    """Log the SDK's METRIC records and its environment note at DEBUG instead of INFO.

    Args:
        tap_logger_name: The tap's logger, on which the SDK logs the environment note.
    """
    for name, messages in ((METRICS_LOGGER_NAME, None), (tap_logger_name, DEMOTED_MESSAGES)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteToDebug) for f in logger.filters):
            logger.addFilter(_DemoteToDebug(messages))


def records_are_parsed() -> bool:
    """Whether stderr is read as structured log records, so the final error should be one.

    Meltano hands the tap a logging config (`SINGER_SDK_LOG_CONFIG`) whenever it runs it.
    `meltano run` and `meltano invoke` read stderr on its own and parse each JSON record, so
    only a record reaches them at ERROR level. `meltano config test` reads stdout and stderr
    as one stream and prints its last line as it is, JSON and all; there (and wherever the two
    are the same file) a plain line is what a person reads.
    """
    if not os.environ.get("SINGER_SDK_LOG_CONFIG"):
        return False
    try:
        return not os.path.samestat(os.fstat(1), os.fstat(2))
    except OSError:
        return True
