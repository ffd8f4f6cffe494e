"""Time for tests: a clock whose waits return at once, and a record of what a run waited.

The failure policy and the pacing wait through the run's `Clock`; with `VirtualClock` a wait
adds to the clock's reading instead of passing, so a test of a 10-minute retry budget takes
as long as its requests. Only the whole-response deadline (`request_timeout`) runs in real
time: it cuts a socket from another thread.
"""

from __future__ import annotations

import time
import typing as t

from tap_smartcar_connections.policy import Clock

if t.TYPE_CHECKING:
    from pathlib import Path


class VirtualClock(Clock):
    """Real time plus every wait so far; each wait returns at once and is recorded."""

    log: t.ClassVar[Path | None] = None
    """Where a tap in another process appends each wait, one per line."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    def wall(self) -> float:
        return time.time() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.skipped += seconds
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as file:
                file.write(f"{seconds!r}\n")
