"""The command line: signals first, then the files it is given, then the SDK's command.

Whatever happens, a run ends with one line: `tap-smartcar-connections: error: ...` and exit
code 1, `... stopped by SIGTERM ...` and 143 (SIGINT: 130), or success. Nothing heavy is
imported before the signal handlers are in place, so a SIGTERM during start-up stops the run
like one later.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import typing as t
from pathlib import Path

from tap_smartcar_connections.errors import (
    ConfigError,
    DownstreamError,
    Interrupted,
    SmartcarError,
    StateError,
    interrupt,
)

NAME = "tap-smartcar-connections"


def main() -> None:
    """Run the tap's command line, ending expected failures with one line and a non-zero exit."""
    argv = sys.argv[1:]
    try:
        signal.signal(signal.SIGINT, interrupt)  # Python's own until now: a traceback
        signal.signal(signal.SIGTERM, interrupt)  # the default until now: killed, no line
        from tap_smartcar_connections.logs import demote_sdk_chatter  # noqa: PLC0415
        from tap_smartcar_connections.state import check_state  # noqa: PLC0415
        from tap_smartcar_connections.tap import TapSmartcarConnections  # noqa: PLC0415

        demote_sdk_chatter(NAME)

        _check_input_files(argv)
        sys.argv[1:] = _check_state_file(argv, check_state)
        TapSmartcarConnections.cli()
    except SmartcarError as exc:
        _finish(f"{NAME}: error: {exc}", exc.exit_code, downstream=isinstance(exc, DownstreamError))
    except Interrupted as exc:
        if exc.on_stop is not None:
            with contextlib.suppress(SmartcarError, OSError):  # stdout may be gone too
                exc.on_stop()
        _finish(
            f"{NAME}: stopped by {exc}; the last STATE emitted is safe to resume from",
            exc.exit_code,
        )
    except SystemExit as exc:
        _ignore_signals()  # the command is done: see `_ignore_signals`
        # The SDK's --test prints no verdict; a failure has already raised SmartcarError.
        if exc.code in {0, None} and ("--test" in argv or "--test=all" in argv):
            print(
                f"{NAME}: connection test passed: the API accepted the credentials", file=sys.stderr
            )
        raise


def _paths(argv: list[str], option: str) -> list[tuple[int, str]]:
    """Where `option`'s values are in `argv` (as `--option FILE` or `--option=FILE`)."""
    found = []
    for index, arg in enumerate(argv):
        if arg.startswith(f"{option}="):
            found.append((index, arg.split("=", 1)[1]))
        elif arg == option and index + 1 < len(argv):
            found.append((index, argv[index + 1]))
    return found


def _read_json(text: str) -> t.Any:
    """`text` read as JSON, as the SDK reads its files: NaN and Infinity are not JSON.

    Raises:
        ValueError: If it is not JSON.
    """
    return json.loads(text, parse_constant=_not_json)


def _not_json(constant: str) -> t.NoReturn:
    """Refuse a NaN or Infinity (Python's JSON reader takes them; the SDK's does not)."""
    msg = f"{constant} is not JSON"
    raise ValueError(msg)


def _check_input_files(argv: list[str]) -> None:
    """Fail with the file's name when a `--config` or `--catalog` file is not a JSON object.

    The SDK reads them in option callbacks, where a bad file ends in a traceback.

    Raises:
        ConfigError: Naming the file and what is wrong with it.
    """
    named = [("config", path) for _, path in _paths(argv, "--config") if path != "ENV"]
    for kind, path in named + [("catalog", path) for _, path in _paths(argv, "--catalog")]:
        try:
            content = _read_json(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        except (ValueError, RecursionError):
            reason = "it is not valid JSON (UTF-8)"
        else:
            if not isinstance(content, dict):
                reason = "it is not a JSON object"
            elif kind == "catalog" and (problem := _catalog_problem(content)):
                reason = problem
            else:
                continue
        msg = f"cannot use {kind} file {path}: {reason}"
        raise ConfigError(msg)


def _catalog_problem(content: dict[str, t.Any]) -> str | None:
    """What keeps the SDK from reading `content` as a Singer catalog, or None."""
    from singer_sdk.singerlib import Catalog  # noqa: PLC0415  (after the signal handlers)

    try:
        Catalog.from_dict(content)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"it is not a Singer catalog ({type(exc).__name__})"
    return None


def _check_state_file(argv: list[str], check: t.Callable[[t.Any], None]) -> list[str]:
    """Fail with the file's name when `--state` is not readable JSON with valid bookmarks.

    The SDK would crash with a JSON traceback that does not say which file was wrong.

    Returns:
        `argv` without a `--state` whose file is empty: what `target > state.json` leaves when
        no STATE came, which means no state.

    Raises:
        StateError: Naming the file and what is wrong with it.
    """
    drop: set[int] = set()
    for index, path in _paths(argv, "--state"):
        try:
            text = Path(path).read_text(encoding="utf-8")
            if not text.strip():
                drop |= {index, index + 1} if argv[index] == "--state" else {index}
                continue
            check(_read_json(text))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        except (ValueError, RecursionError):
            reason = "it is not valid JSON (UTF-8)"
        except StateError as exc:
            reason = str(exc)
        else:
            continue
        msg = (
            f"cannot use state file {path}: {reason}. Fix it, or clear the state "
            "(meltano state clear) to re-sync from scratch"
        )
        raise StateError(msg)
    return [arg for index, arg in enumerate(argv) if index not in drop]


def _ignore_signals() -> None:
    """Ignore SIGTERM and SIGINT from now on: the run is over, only its exit is left.

    Nothing may cut its last line; and once the interpreter tears down, Python gives signals
    back their default action, which would kill a run whose output is complete without a word.
    """
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _finish(line: str, exit_code: int, *, downstream: bool = False) -> t.NoReturn:
    """Print the run's last line and exit; where stderr is parsed as records, log it as ERROR.

    `meltano run` shows a plain stderr line at INFO: only a structured record reaches it as an
    error. `meltano config test` prints its last line raw: there it stays a plain line. The
    line goes through the run's redaction either way (`redaction.redact_line`).
    """
    _ignore_signals()
    from tap_smartcar_connections.logs import records_are_parsed  # noqa: PLC0415
    from tap_smartcar_connections.redaction import redact_line  # noqa: PLC0415

    line = redact_line(line)
    if not downstream:
        try:
            sys.stdout.flush()
        except OSError:
            downstream = True
    if downstream:
        # Nothing more can be written there; keep interpreter shutdown from trying again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if records_are_parsed():
        import logging  # noqa: PLC0415

        logging.getLogger(NAME).error("%s", line)
    else:
        print(line, file=sys.stderr)
    sys.exit(exit_code)
