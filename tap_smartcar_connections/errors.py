"""The tap's exceptions: those that end a run with one line, and the failures a request meets.

A run ends either with a `SmartcarError` (one human-readable line, exit code 1), with
`Interrupted` (SIGTERM or SIGINT: exit 143 or 130), or successfully. Every failure a request can
meet (`BrokenBody`, `HttpStatus`, `transport.ResponseTimeout`, and what `requests` raises) goes
through the failure policy (`policy.py`), which decides whether it is retried or becomes an
`ApiError`. Nothing heavy is imported here: the command line installs its signal handlers
with this module before anything else is loaded.
"""

from __future__ import annotations

import signal
import typing as t

if t.TYPE_CHECKING:
    from types import FrameType

    import requests


class SmartcarError(Exception):
    """An expected failure that ends the run with one human-readable line."""

    exit_code = 1


class ConfigError(SmartcarError):
    """The configuration is invalid; raised before any request is made."""


class StateError(SmartcarError):
    """The state (bookmarks) given to the tap cannot be used."""


class ApiError(SmartcarError):
    """The Smartcar API refused a request, or kept failing, as the failure policy decided."""


class Refused(ApiError):
    """The API answered a client error (4xx) that waiting cannot fix."""

    def __init__(self, message: str, status: int, setting: str) -> None:
        """Keep the status and the URL setting that refused.

        A walk tells a refused checkpoint from a bad setting, or refused credentials, by them.
        """
        super().__init__(message)
        self.status = status
        self.setting = setting


class DownstreamError(SmartcarError):
    """Standard output cannot be written: the target stopped reading, or the disk is full."""

    @classmethod
    def wrap(cls, exc: OSError) -> DownstreamError:
        """The error to raise for a failed write to stdout."""
        if isinstance(exc, BrokenPipeError):
            reason = "the downstream target stopped reading (broken pipe)"
        else:
            reason = f"cannot write to standard output ({exc.strerror or type(exc).__name__})"
        return cls(f"{reason}; the last STATE it received is safe to resume from")


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; a BaseException so that no retry loop swallows it."""

    def __init__(self, signum: int, on_stop: t.Callable[[], None] | None = None) -> None:
        """Name the signal; the exit code is the shell's convention, 128 + its number.

        `on_stop` is for the command line to call once the run has unwound: the tap's
        handler passes what writes the last STATE once more.
        """
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum
        self.on_stop = on_stop


class BrokenBody(Exception):
    """A response whose body is unusable: cut off, corrupt, too large, or not the documented data.

    The message is the server's own text, unredacted and uncut: only the requester's failure
    line, which redacts before it cuts, may show it.
    """


class HttpStatus(Exception):
    """A response that is not a 2xx: what it means is the failure policy's to say."""

    def __init__(self, response: requests.Response, summary: str) -> None:
        """Keep the response (for `Retry-After`) and its one-line, redacted summary."""
        super().__init__(summary)
        self.response = response
        self.status = response.status_code


def interrupt(
    signum: int, frame: FrameType | None, on_stop: t.Callable[[], None] | None = None
) -> t.NoReturn:
    """The handler for SIGTERM and SIGINT: stop the run, at once, wherever it is.

    Further signals are ignored: the run is already stopping, and a second `Interrupted`
    raised while the last STATE is written again would cut it.

    Raises:
        Interrupted: Always.
    """
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Interrupted(signum, on_stop)
