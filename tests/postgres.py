"""A throwaway PostgreSQL server on 127.0.0.1 for the end-to-end tests.

Uses Debian's `postgresql` package (`scripts/test.sh` installs it when run as root). The
cluster lives in a temporary directory, listens on a free port and is removed at the end of
the session. Without the server binaries the tests are skipped, except in CI (`CI` set),
where they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "postgres"
PASSWORD = "pg-secret-4e1c7a9b"
DATABASE = "warehouse"


def find_bindir() -> Path | None:
    """Return the newest installed PostgreSQL server's `bin` directory, if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)],
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Postgres:
    """A running throwaway cluster, reachable over TCP with a password."""

    bindir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    def target_env(self, schema: str) -> dict[str, str]:
        """Environment variables that point Meltano's `target-postgres` at `schema`."""
        return {
            "TARGET_POSTGRES_HOST": self.host,
            "TARGET_POSTGRES_PORT": str(self.port),
            "TARGET_POSTGRES_USER": self.user,
            "TARGET_POSTGRES_PASSWORD": self.password,
            "TARGET_POSTGRES_DATABASE": self.database,
            "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema,
        }

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL with `psql` and return its unaligned output."""
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database or self.database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.password},
            timeout=60,
            check=False,
        )
        if proc.returncode:
            msg = f"psql failed ({proc.returncode}): {proc.stderr.strip()}"
            raise RuntimeError(msg)
        return proc.stdout.strip()

    def rows(self, sql: str) -> list[dict[str, t.Any]]:
        """Return the rows of a query as JSON objects."""
        out = self.psql(f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({sql}) AS q")  # noqa: S608
        rows: list[dict[str, t.Any]] = json.loads(out)
        return rows


def _run(
    command: list[str | Path], user: str | None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a server command, as `user` when given (PostgreSQL refuses to run as root)."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=check, user=user, cwd="/"
    )


@contextlib.contextmanager
def running_postgres(timezone: str = "UTC") -> t.Iterator[Postgres]:
    """Start a throwaway cluster, yield it, then stop it and delete its files.

    As root the cluster is created and run as the `postgres` user (PostgreSQL refuses to run
    as root), in a directory that user owns. `timezone` is the server's: the session time
    zone of every client that does not choose its own.
    """
    bindir = find_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL server binaries not found: install Debian's postgresql package "
            "(scripts/test.sh does it when run as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    runas = USER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="tap-smartcar-pg-"))
    if runas:
        shutil.chown(root, runas)
    data = root / "data"
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD)
    if runas:
        shutil.chown(pwfile, runas)
    port = _free_port()
    server = Postgres(bindir=bindir, port=port)
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
        f"-c timezone={timezone} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        initdb: list[str | Path] = [bindir / "initdb", "-D", data, "-U", USER]
        initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync"]
        _run(initdb, runas)
        _run(
            [bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", options, "start"], runas
        )
    except subprocess.CalledProcessError as exc:
        log = root / "log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}{detail}")
    try:
        server.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        yield server
    finally:
        _run([bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], runas, check=False)
        shutil.rmtree(root, ignore_errors=True)


SERVER_TIME_ZONE = "America/New_York"
"""Not UTC, as many servers are not: every load must still store the tap's UTC timestamps."""


@pytest.fixture(scope="session")
def postgres() -> t.Iterator[Postgres]:
    """A throwaway PostgreSQL server for the whole session, in a time zone other than UTC."""
    with running_postgres(SERVER_TIME_ZONE) as server:
        yield server
