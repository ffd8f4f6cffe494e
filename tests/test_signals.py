"""SIGTERM and SIGINT, at the moments that used to go wrong: start-up, discovery, mid-page.

Each run is the real console script. To signal a run at a chosen moment without timing it,
the tests watch the process: its signal handlers (`/proc/<pid>/status`), or its standard output
filling a pipe made small, so that the tap blocks writing at a known place.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
import typing as t
from pathlib import Path

import pytest

from .conftest import TOKEN
from .test_hostile import Hostile, conn, page

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))
PIPE_BYTES = 4096
"""The smallest pipe Linux makes: what the tap writes beyond it waits for the reader."""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="watches the process through Linux's /proc"
)


def wait_for(condition: t.Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds (no timing is asserted: the deadline only ends a hang)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"


def handles(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum`."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def small_pipe() -> tuple[int, int]:
    """A pipe of `PIPE_BYTES`: (read end, write end)."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read, write


def full(fd: int) -> bool:
    """Whether the pipe whose read end is `fd` is (about) full: its writer waits for room.

    A write that does not fit leaves a little room unused, so "full" allows for it.
    """
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0] > PIPE_BYTES - 512


def start(
    tmp_path: Path, config: dict[str, t.Any], *args: str, stdout: int
) -> subprocess.Popen[bytes]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [CLI, "--config", str(path), *args], stdout=stdout, stderr=subprocess.PIPE
    )


def last_line(stderr: bytes, signum: int) -> str:
    """The run's one line about the signal (and no traceback before it)."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    name = signal.Signals(signum).name
    assert text.count(f"stopped by {name}") == 1, text
    line = text.strip().splitlines()[-1]
    assert line == (
        f"tap-smartcar-connections: stopped by {name}; the last STATE emitted is safe to "
        "resume from"
    )
    return line


@pytest.fixture
def server() -> t.Iterator[Hostile]:
    hostile = Hostile([page([conn(1, "2026-01-01T00:00:00Z")])])
    yield hostile
    hostile.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_exits_with_one_line(
    tmp_path: Path, server: Hostile, signum: int
) -> None:
    """Signalled the moment the tap's handlers exist, before its modules (msgspec) are loaded.

    Python handles SIGINT from its own start, so the SIGTERM handler is what says the tap's
    are in place (the command line installs it last).
    """
    config = {"management_token": TOKEN, "api_url": server.url, "modes": ["live"]}
    tap = start(tmp_path, config, stdout=subprocess.PIPE)

    wait_for(lambda: tap.poll() is not None or handles(tap.pid, signal.SIGTERM), "a handler")
    maps = Path(f"/proc/{tap.pid}/maps").read_text()
    tap.send_signal(signum)
    out, err = tap.communicate(timeout=60)

    assert "msgspec" not in maps  # still starting: the tap's modules were not all loaded
    assert tap.returncode == 128 + signum, err.decode()
    last_line(err, signum)
    assert out == b""
    assert server.requests == []


def test_sigint_during_discovery_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """The catalog (15 KB) fills a small pipe: the tap is writing it when Ctrl-C comes."""
    config = {"api_version": "v3", "client_id": "client-x", "client_secret": "secret-xxxxxxxx"}
    read, write = small_pipe()
    tap = start(tmp_path, config, "--discover", stdout=write)
    os.close(write)

    wait_for(lambda: full(read), "the catalog filling the pipe")
    tap.send_signal(signal.SIGINT)
    with os.fdopen(read, "rb") as reader:
        out = reader.read()
    err = tap.communicate(timeout=60)[1]

    assert tap.returncode == 130, err.decode()
    last_line(err, signal.SIGINT)
    assert len(out) >= PIPE_BYTES


def test_sigterm_mid_page_writes_the_last_state_again_as_the_final_message(
    tmp_path: Path,
) -> None:
    """Page 2 (200 records) fills a small pipe: the tap is writing its records when signalled.

    Page 1 (the SCHEMA, one RECORD and the STATE of its checkpoint) fits in the pipe.

    A target that forgets a STATE followed by RECORDs (target-jsonl 0.1.4) still gets the
    last STATE: it is written again, last.
    """
    stamps = [f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z" for i in range(200)]
    second = page([conn(n, at) for n, at in enumerate(reversed(stamps))])
    server = Hostile([page([conn(999, "2026-02-01T00:00:00Z")], cursor="c2"), second])
    config = {"management_token": TOKEN, "api_url": server.url, "modes": ["live"]}
    read, write = small_pipe()
    try:
        tap = start(tmp_path, config, stdout=write)
        os.close(write)
        wait_for(lambda: len(server.requests) == 2 and full(read), "page 2 filling the pipe")
        tap.send_signal(signal.SIGTERM)
        with os.fdopen(read, "rb") as reader:
            out = reader.read()
        err = tap.communicate(timeout=60)[1]
    finally:
        server.close()

    assert tap.returncode == 143, err.decode()
    last_line(err, signal.SIGTERM)
    messages = [json.loads(line) for line in out.decode().splitlines()]
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "STATE"
    before = max(i for i, kind in enumerate(kinds[:-1]) if kind == "STATE")
    assert messages[-1] == messages[before]
    assert "RECORD" in kinds[before + 1 : -1]  # page 2's records followed that STATE
    assert 1 < kinds.count("RECORD") < 201
    partition = messages[-1]["value"]["bookmarks"]["connections"]["partitions"][0]
    assert partition["checkpoint"]["cursor"] == "c2"


def test_a_signal_while_the_tap_exits_does_not_kill_a_complete_run(tmp_path: Path) -> None:
    """SIGTERM once the catalog is out and the tap no longer handles signals: it is exiting.

    Python hands signals back their default action while it tears the interpreter down (some
    50 ms here); a run whose output is complete must still exit 0, not be killed silently.
    """
    tap = start(tmp_path, {"management_token": TOKEN}, "--discover", stdout=subprocess.PIPE)
    assert tap.stdout is not None
    out = b""
    while not out.endswith(b"}\n"):
        chunk = os.read(tap.stdout.fileno(), 65_536)
        assert chunk, "the catalog never came"
        out += chunk
    wait_for(lambda: not handles(tap.pid, signal.SIGTERM), "the tap's handler go")
    tap.send_signal(signal.SIGTERM)
    err = tap.communicate(timeout=60)[1]

    assert [s["tap_stream_id"] for s in json.loads(out)["streams"]] == ["connections"]
    assert tap.returncode == 0, err.decode()
    assert "stopped by" not in err.decode()
    assert "Traceback" not in err.decode()
