"""End to end through real Meltano: the repository's meltano.yml, DuckDB, jsonl and PostgreSQL.

One throwaway Meltano project per session (a copy of meltano.yml whose tap installs from this
checkout), `meltano install` once, Meltano's own state store, and a simulator per test whose
URL and token reach the plugins through environment variables, as a deployment would pass them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import typing as t
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from smartcar_simulator import (
    V3_CONNECTIONS_PATH,
    V3_MODES,
    SmartcarSimulator,
    generate_connections,
)
from tap_smartcar_connections.timestamps import normalize_timestamp

from .conftest import ROOT, TOKEN
from .postgres import (  # noqa: F401  (postgres: the session fixture)
    PASSWORD,
    SERVER_TIME_ZONE,
    Postgres,
    postgres,
)

pytestmark = pytest.mark.e2e

MELTANO = Path(sys.executable).with_name("meltano")
HUB_FILE = ROOT / "hub" / "extractors" / "tap-smartcar-connections" / "smartcar-connections.yml"
CLIENT_SECRET = "cs-test-4b7f1e09a2d85c36e1f0b9a7d4c2e815"
Key = tuple[str, str]
Row = tuple[str, str, str, str]


@dataclass
class MeltanoProject:
    """A Meltano project in a temporary directory, with its plugins installed."""

    root: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `meltano ARGS`; check that no secret reaches its output."""
        proc = subprocess.run(
            [str(MELTANO), *args],
            cwd=self.root,
            env={**clean_environment(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        for secret in (TOKEN, PASSWORD, CLIENT_SECRET):
            assert secret not in proc.stdout + proc.stderr, f"secret leaked by meltano {args}"
        return proc


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would configure the plugins."""
    prefixes = ("TAP_SMARTCAR_CONNECTIONS_", "TARGET_", "MELTANO_", "SINGER_SDK_", "PG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["MELTANO_CLI_DISABLE_VERSION_CHECK"] = "true"
    return env


@pytest.fixture(scope="session")
def meltano_project(tmp_path_factory: pytest.TempPathFactory) -> MeltanoProject:
    """The repository's meltano.yml in a temporary project, `meltano install`ed once."""
    root = tmp_path_factory.mktemp("meltano-project")
    text = (ROOT / "meltano.yml").read_text()
    assert text.count("pip_url: -e .\n") == 1
    (root / "meltano.yml").write_text(
        text.replace("pip_url: -e .\n", f"pip_url: -e {shlex.quote(str(ROOT))}\n")
    )
    project = MeltanoProject(root)
    installed = project.run("install", timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return project


def tap_env(simulator: SmartcarSimulator, state_suffix: str) -> dict[str, str]:
    return {
        "TAP_SMARTCAR_CONNECTIONS_API_URL": simulator.api_url,
        "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": TOKEN,
        "MELTANO_RUN_STATE_ID_SUFFIX": state_suffix,
    }


def recent_simulator(n: int, seed: int) -> SmartcarSimulator:
    """A started simulator whose connections all precede today, whatever the clock says."""
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    simulator = SmartcarSimulator(generate_connections(n, seed=seed, start=start), token=TOKEN)
    simulator.start()
    return simulator


def connect_new(simulator: SmartcarSimulator, n: int) -> set[Key]:
    """Add `n` connections made in the last hours (newer than any bookmark), both modes."""
    now = datetime.now(UTC)
    new = [
        {
            "userId": str(uuid.uuid4()),
            "vehicleId": str(uuid.uuid4()),
            "connectedAt": (now - timedelta(minutes=10 * (i + 1))).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": ("live", "simulated")[i % 2],
        }
        for i in range(n)
    ]
    simulator.add(*new)
    return {(c["userId"], c["vehicleId"]) for c in new}


def served(simulator: SmartcarSimulator) -> set[Row]:
    return {
        (c["userId"], c["vehicleId"], normalize_timestamp(c["connectedAt"]), c["mode"])
        for c in simulator.connections()
    }


def table(pg: Postgres, schema: str) -> dict[Key, dict[str, t.Any]]:
    """The loaded `connections` table by key, with `connectedAt` in the tap's UTC form."""
    rows = pg.rows(
        'SELECT "userId", "vehicleId", mode, _sdc_deleted_at, _sdc_table_version, '  # noqa: S608
        "_sdc_received_at, "
        """to_char("connectedAt", 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "connectedAt" """
        f'FROM "{schema}".connections'
    )
    by_key = {(r["userId"], r["vehicleId"]): r for r in rows}
    assert len(by_key) == len(rows), "a key is loaded twice"
    return by_key


def active(rows: dict[Key, dict[str, t.Any]]) -> set[Row]:
    return {
        (r["userId"], r["vehicleId"], r["connectedAt"], r["mode"])
        for r in rows.values()
        if r["_sdc_deleted_at"] is None
    }


def failed(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stderr[-4000:]}"


def test_meltano_yml_needs_no_hub_and_defines_the_schedules() -> None:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    extractors = {p["name"]: p for p in project["plugins"]["extractors"]}
    loaders = {p["name"]: p for p in project["plugins"]["loaders"]}
    full = extractors["tap-smartcar-connections--full"]
    jobs = {j["name"]: j["tasks"] for j in project["jobs"]}
    plugins = set(extractors) | set(loaders)

    assert project["plugins"]["extractors"][0]["name"] == "tap-smartcar-connections"
    for plugin in [*extractors.values(), *loaders.values()]:
        assert "inherit_from" in plugin or {"namespace", "pip_url"} <= plugin.keys()
    assert loaders["target-postgres"]["pip_url"] == "meltanolabs-target-postgres==0.8.1"
    assert loaders["target-postgres"]["env"] == {"PGTZ": "UTC"}  # see the time zone test
    assert loaders["target-jsonl"]["pip_url"].startswith("target-jsonl==")
    # duckdb >= 1.3 makes target-duckdb 0.8.0 drop the first row of every batch.
    assert loaders["target-duckdb"]["pip_url"] == "target-duckdb==0.8.0 duckdb==1.2.2"
    assert loaders["target-duckdb"]["variant"] == "jwills"
    assert full["inherit_from"] == "tap-smartcar-connections"
    assert full["metadata"] == {"connections": {"replication-method": "FULL_TABLE"}}
    assert full["config"]["emit_activate_version_messages"] is True
    for tasks in jobs.values():
        assert all(set(task.split()) <= plugins for task in tasks)
    assert {s["job"] for s in project["schedules"]} == set(jobs)


def test_meltano_lists_the_nightly_and_weekly_schedules(meltano_project: MeltanoProject) -> None:
    listed = meltano_project.run("schedule", "list", "--format=json")

    assert listed.returncode == 0, failed(listed)
    schedules = {s["name"]: s for s in json.loads(listed.stdout)["schedules"]["job"]}
    nightly = schedules["connections-nightly"]
    weekly = schedules["connections-weekly-full-refresh"]
    assert nightly["cron_interval"] == "0 2 * * *"
    assert nightly["job"]["tasks"] == ["tap-smartcar-connections target-postgres"]
    assert weekly["cron_interval"] == "0 4 * * 0"
    assert weekly["job"]["tasks"] == ["tap-smartcar-connections--full target-postgres"]


def test_a_new_project_adds_the_tap_from_the_hub_definition(tmp_path: Path) -> None:
    project = MeltanoProject(tmp_path / "elt")
    created = MeltanoProject(tmp_path).run("init", "elt", "--no-usage-stats")
    assert created.returncode == 0, failed(created)
    added = project.run(
        "add",
        "--no-install",
        "--plugin-type=extractor",
        "tap-smartcar-connections",
        f"--from-ref={HUB_FILE}",
    )
    assert added.returncode == 0, failed(added)
    meltano_yml = project.root / "meltano.yml"
    text = meltano_yml.read_text()
    # Not on PyPI yet: install this checkout instead of the published package.
    assert text.count("pip_url: tap-smartcar-connections\n") == 1
    meltano_yml.write_text(
        text.replace(
            "pip_url: tap-smartcar-connections\n", f"pip_url: -e {shlex.quote(str(ROOT))}\n"
        )
    )
    installed = project.run("install", "tap-smartcar-connections", timeout=900)
    assert installed.returncode == 0, failed(installed)

    with SmartcarSimulator(generate_connections(20, seed=4), token=TOKEN) as simulator:
        for name, value in (("management_token", TOKEN), ("api_url", simulator.api_url)):
            stored = project.run("config", "set", "tap-smartcar-connections", name, value)
            assert stored.returncode == 0, failed(stored)
        tested = project.run("config", "test", "tap-smartcar-connections")
        invoked = project.run("invoke", "tap-smartcar-connections")

    assert TOKEN in (project.root / ".env").read_text()
    assert TOKEN not in meltano_yml.read_text()
    assert "Plugin configuration is valid" in tested.stdout
    assert invoked.returncode == 0, failed(invoked)
    records = [json.loads(line) for line in invoked.stdout.splitlines()]
    assert sum(m["type"] == "RECORD" for m in records) == 20


def test_the_connection_test_says_valid_or_invalid(meltano_project: MeltanoProject) -> None:
    with SmartcarSimulator(generate_connections(20, seed=2), token=TOKEN) as simulator:
        env = tap_env(simulator, "config-test")
        good = meltano_project.run("config", "test", "tap-smartcar-connections", env=env)
        bad = meltano_project.run(
            "config",
            "test",
            "tap-smartcar-connections",
            env={**env, "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": "revoked"},
        )

    assert good.returncode == 0, failed(good)
    assert "Plugin configuration is valid" in good.stdout
    assert bad.returncode == 1
    assert "Plugin configuration is invalid" in bad.stderr
    assert "401 AUTHENTICATION" in bad.stderr


def verdict_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The line `meltano config test` prints after its verdict: the tap's last line, as it is."""
    lines = proc.stderr.splitlines()
    (index,) = [i for i, line in enumerate(lines) if "Plugin configuration is invalid" in line]
    return lines[index + 1]


def test_the_connection_test_shows_the_taps_error_as_a_plain_line(
    meltano_project: MeltanoProject,
) -> None:
    """`meltano config test` prints the tap's last line raw: it must not be a JSON log record.

    It reads the tap's stdout and stderr as one stream (`meltano run` parses stderr on its own,
    so there the line stays a structured ERROR record: see the test after the next).
    """
    with SmartcarSimulator(
        generate_connections(20, seed=2), token=TOKEN, client_secret=CLIENT_SECRET
    ) as simulator:
        v2 = meltano_project.run(
            "config",
            "test",
            "tap-smartcar-connections",
            env={
                **tap_env(simulator, "config-test"),
                "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": "revoked",
            },
        )
        v3 = meltano_project.run(
            "config",
            "test",
            "tap-smartcar-connections",
            env={
                **tap_env_v3(simulator, "config-test-v3"),
                "TAP_SMARTCAR_CONNECTIONS_CLIENT_SECRET": "wrong-secret",
            },
        )

    assert (v2.returncode, v3.returncode) == (1, 1)
    assert verdict_line(v2).startswith(
        "tap-smartcar-connections: error: Smartcar API error 401 AUTHENTICATION: "
    )
    assert verdict_line(v3).startswith(
        "tap-smartcar-connections: error: Smartcar's token endpoint refused the client credentials"
    )
    assert not [line for line in (v2.stderr + v3.stderr).splitlines() if line.startswith("{")]


def test_scheduled_runs_into_jsonl_read_only_new_connections(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    simulator = recent_simulator(300, seed=5)
    try:
        env = {**tap_env(simulator, "jsonl"), "TARGET_JSONL_DESTINATION_PATH": str(tmp_path)}
        output = tmp_path / "connections.jsonl"
        first = meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env)
        assert first.returncode == 0, failed(first)
        loaded = [json.loads(line) for line in output.read_text().splitlines()]
        assert {(r["userId"], r["vehicleId"]) for r in loaded} == {
            (c["userId"], c["vehicleId"]) for c in simulator.connections()
        }
        assert len(loaded) == len(simulator)
        new = connect_new(simulator, 7)
        simulator.clear_log()
        simulator.faults.rate_limit_every = 2
        simulator.faults.retry_after = "0"
        second = meltano_project.run(
            "--log-format=json", "run", "tap-smartcar-connections", "target-jsonl", env=env
        )
        state = meltano_project.run(
            "state", "get", "dev:tap-smartcar-connections-to-target-jsonl:jsonl", env=env
        )
    finally:
        simulator.stop()

    assert second.returncode == 0, failed(second)
    appended = [json.loads(line) for line in output.read_text().splitlines()][len(loaded) :]
    assert {(r["userId"], r["vehicleId"]) for r in appended} == new
    assert sum(r.status == 200 for r in simulator.requests) == 2  # one page per mode
    bookmarks = {
        p["context"]["mode"]: p["replication_key_value"]
        for p in json.loads(state.stdout)["singer_state"]["bookmarks"]["connections"]["partitions"]
    }
    assert bookmarks == {
        mode: max(normalize_timestamp(c["connectedAt"]) for c in simulator.connections(mode))
        for mode in ("live", "simulated")
    }
    events = [json.loads(line) for line in second.stderr.splitlines() if line.startswith("{")]
    retries = [e for e in events if "retrying in" in e.get("event", "")]
    assert retries
    assert all(e["level"] == "warning" and e["name"] == "tap-smartcar-connections" for e in retries)
    # meltano.yml selects no stream by a name that API v2 lacks (Meltano would warn about it),
    # and the SDK's METRIC lines and environment note wait at DEBUG.
    assert "was not found in the catalog" not in first.stderr + second.stderr
    tap_lines = [e["event"] for e in events if e.get("name") == "tap-smartcar-connections"]
    assert any("finished: " in line for line in tap_lines)
    assert not [line for line in tap_lines if "METRIC" in line or "env var" in line]


def test_stream_maps_pseudonymise_user_id_through_meltano(
    meltano_project: MeltanoProject,
) -> None:
    with SmartcarSimulator(generate_connections(40, seed=6), token=TOKEN) as simulator:
        env = {
            **tap_env(simulator, "privacy"),
            "TAP_SMARTCAR_CONNECTIONS_STREAM_MAPS": json.dumps(
                {"connections": {"userId": "md5(userId)"}}
            ),
        }
        invoked = meltano_project.run("invoke", "tap-smartcar-connections", env=env)
        users = {c["userId"] for c in simulator.connections()}

    assert invoked.returncode == 0, failed(invoked)
    messages = [json.loads(line) for line in invoked.stdout.splitlines()]
    (schema,) = [m for m in messages if m["type"] == "SCHEMA"]
    records = [m["record"] for m in messages if m["type"] == "RECORD"]
    assert schema["key_properties"] == ["userId", "vehicleId"]
    assert len(records) == 40
    assert all(len(r["userId"]) == 32 and r["userId"] not in users for r in records)
    assert not any(user in invoked.stdout for user in users)


def test_scheduled_incremental_runs_into_postgres(
    meltano_project: MeltanoProject,
    postgres: Postgres,  # noqa: F811
) -> None:
    simulator = recent_simulator(300, seed=7)
    try:
        env = {**tap_env(simulator, "pg-incremental"), **postgres.target_env("incremental")}
        first = meltano_project.run("schedule", "run", "connections-nightly", env=env)
        assert first.returncode == 0, failed(first)
        before = table(postgres, "incremental")
        assert active(before) == served(simulator)
        assert len(before) == len(simulator)
        new = connect_new(simulator, 5)
        simulator.clear_log()
        second = meltano_project.run("schedule", "run", "connections-nightly", env=env)
    finally:
        simulator.stop()

    assert second.returncode == 0, failed(second)
    after = table(postgres, "incremental")
    written = {
        key
        for key, row in after.items()
        if key not in before or row["_sdc_received_at"] != before[key]["_sdc_received_at"]
    }
    assert written == new
    assert len(simulator.requests) == 2
    assert active(after) == served(simulator)
    assert len(after) == len(simulator)


def test_postgres_stores_the_taps_utc_timestamps_whatever_the_servers_time_zone(
    meltano_project: MeltanoProject,
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    """meltano.yml gives target-postgres UTC sessions (PGTZ), which nothing outside overrides.

    target-postgres 0.8.1 writes the tap's `...Z` timestamps into `timestamp without time zone`
    columns through the session's time zone: the same target without that setting, on the same
    server, stores every row shifted by the zone's offset.
    """
    with SmartcarSimulator(generate_connections(30, seed=14), token=TOKEN) as simulator:
        env = {
            **tap_env(simulator, "time-zone"),
            **postgres.target_env("time_zone"),
            "PGTZ": SERVER_TIME_ZONE,  # a caller's own PGTZ does not win either
        }
        loaded = meltano_project.run("run", "tap-smartcar-connections", "target-postgres", env=env)
        config = tmp_path / "tap.json"
        config.write_text(json.dumps({"api_url": simulator.api_url, "management_token": TOKEN}))
        messages = subprocess.run(
            [MELTANO.with_name("tap-smartcar-connections"), "--config", config],
            env=clean_environment(),
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    target = meltano_project.root / ".meltano" / "loaders" / "target-postgres" / "venv" / "bin"
    target_config = tmp_path / "target.json"
    target_env = postgres.target_env("time_zone_unguarded")
    target_config.write_text(
        json.dumps(
            {k.removeprefix("TARGET_POSTGRES_").lower(): v for k, v in target_env.items()}
            | {"port": postgres.port, "add_record_metadata": True}
        )
    )
    unguarded = subprocess.run(
        [target / "target-postgres", "--config", target_config],
        input=messages,
        env=clean_environment(),
        capture_output=True,
        check=False,
        timeout=300,
    )

    assert postgres.psql("SHOW timezone") == SERVER_TIME_ZONE
    assert loaded.returncode == 0, failed(loaded)
    assert active(table(postgres, "time_zone")) == served(simulator)
    assert unguarded.returncode == 0, unguarded.stderr[-3000:]
    shifted = active(table(postgres, "time_zone_unguarded"))
    assert len(shifted) == 30
    assert not shifted & served(simulator)


def tap_env_v3(simulator: SmartcarSimulator, state_suffix: str) -> dict[str, str]:
    """API v3 against the simulator's v3 face, configured as a deployment would: by variables."""
    return {
        "TAP_SMARTCAR_CONNECTIONS_API_VERSION": "v3",
        "TAP_SMARTCAR_CONNECTIONS_CLIENT_ID": simulator.client_id,
        "TAP_SMARTCAR_CONNECTIONS_CLIENT_SECRET": simulator.client_secret,
        "TAP_SMARTCAR_CONNECTIONS_V3_TOKEN_URL": simulator.v3_token_url,
        "TAP_SMARTCAR_CONNECTIONS_V3_VEHICLE_API_URL": simulator.v3_vehicle_api_url,
        "TAP_SMARTCAR_CONNECTIONS_V3_MANAGEMENT_API_URL": simulator.v3_management_api_url,
        "MELTANO_RUN_STATE_ID_SUFFIX": state_suffix,
    }


V3_COLUMNS = ("connectionId", "permissions", "make", "model", "year", "powertrainType")


def served_v3(simulator: SmartcarSimulator) -> dict[Key, dict[str, t.Any]]:
    """What the v3 face serves, by key, in the form the tap loads it."""
    result = {}
    for mode in V3_MODES:
        for c in simulator.connections_v3(mode):
            row = {k: c[k] for k in ("userId", "vehicleId", "mode", *V3_COLUMNS)}
            row["connectedAt"] = normalize_timestamp(c["connectedAt"])
            row["updatedAt"] = normalize_timestamp(c["updatedAt"])
            result[c["userId"], c["vehicleId"]] = row
    return result


def _ts(column: str) -> str:
    return f"""to_char("{column}", 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "{column}\""""


def table_v3(pg: Postgres, schema: str) -> dict[Key, dict[str, t.Any]]:
    """The loaded v3 `connections` table by key, timestamps in the tap's UTC form."""
    columns = ", ".join(f'"{c}"' for c in ("userId", "vehicleId", "mode", *V3_COLUMNS))
    rows = pg.rows(
        f"SELECT {columns}, {_ts('connectedAt')}, {_ts('updatedAt')}, "  # noqa: S608
        f'_sdc_received_at, _sdc_deleted_at FROM "{schema}".connections'
    )
    by_key = {(r["userId"], r["vehicleId"]): r for r in rows}
    assert len(by_key) == len(rows), "a key is loaded twice"
    return by_key


def loaded(rows: dict[Key, dict[str, t.Any]]) -> dict[Key, dict[str, t.Any]]:
    return {k: {c: v for c, v in r.items() if not c.startswith("_sdc_")} for k, r in rows.items()}


def management_tables(pg: Postgres, schema: str) -> tuple[list[t.Any], list[t.Any]]:
    """The loaded webhooks and subscriptions, in the simulator's flat form, sorted by id."""
    webhooks = pg.rows(
        'SELECT id, name, "callbackUri", "errorCallbackUri", "isEnabled", "autoSubscribe", '  # noqa: S608
        f'triggers, data, {_ts("createdAt")} FROM "{schema}".webhooks ORDER BY id'
    )
    subscriptions = pg.rows(
        'SELECT id, "webhookId", "userId", "vehicleId", mode, make, model, year, '  # noqa: S608
        f'"powertrainType", {_ts("createdAt")}, {_ts("updatedAt")} '
        f'FROM "{schema}".subscriptions ORDER BY id'
    )
    return webhooks, subscriptions


def expected_management(simulator: SmartcarSimulator) -> tuple[list[t.Any], list[t.Any]]:
    def normal(record: dict[str, t.Any]) -> dict[str, t.Any]:
        return {
            k: normalize_timestamp(v) if k in {"createdAt", "updatedAt"} else v
            for k, v in record.items()
        }

    subscriptions = [s for mode in V3_MODES for s in simulator.subscriptions(mode)]
    return (
        sorted(map(normal, simulator.webhooks()), key=lambda r: r["id"]),
        sorted(map(normal, subscriptions), key=lambda r: r["id"]),
    )


def test_api_v3_runs_into_postgres_with_webhooks_and_subscriptions(
    meltano_project: MeltanoProject,
    postgres: Postgres,  # noqa: F811
) -> None:
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    simulator = SmartcarSimulator(
        generate_connections(300, seed=21, start=start), token=TOKEN, client_secret=CLIENT_SECRET
    )
    simulator.start()
    state_id = "dev:tap-smartcar-connections-to-target-postgres:pg-v3"
    try:
        env = {**tap_env_v3(simulator, "pg-v3"), **postgres.target_env("api_v3")}
        first = meltano_project.run("run", "tap-smartcar-connections", "target-postgres", env=env)
        assert first.returncode == 0, failed(first)
        before = table_v3(postgres, "api_v3")
        management_before = management_tables(postgres, "api_v3")
        expected_before = served_v3(simulator), expected_management(simulator)
        new = connect_new(simulator, 6)
        simulator.clear_log()
        second = meltano_project.run("run", "tap-smartcar-connections", "target-postgres", env=env)
        after = table_v3(postgres, "api_v3")
        management_after = management_tables(postgres, "api_v3")
        expected_after = served_v3(simulator), expected_management(simulator)
        state = meltano_project.run("state", "get", state_id, env=env)
    finally:
        simulator.stop()

    assert len(before) == 300
    assert loaded(before) == expected_before[0]
    assert all(r[c] is not None for r in before.values() for c in V3_COLUMNS)
    assert management_before == expected_before[1]
    assert len(management_before[0]) == 3
    assert len(management_before[1]) == 6

    assert second.returncode == 0, failed(second)
    written = {
        key
        for key, row in after.items()
        if key not in before or row["_sdc_received_at"] != before[key]["_sdc_received_at"]
    }
    assert written == new
    assert loaded(after) == expected_after[0]
    assert len(after) == 306
    assert all(r["_sdc_deleted_at"] is None for r in after.values())
    assert management_after == expected_after[1] == expected_before[1]
    # Newest first (meta.orderDirection desc): one page of connections per mode.
    assert [r.path for r in simulator.requests].count(V3_CONNECTIONS_PATH) == 2
    assert state.returncode == 0, failed(state)
    partitions = json.loads(state.stdout)["singer_state"]["bookmarks"]["connections"]["partitions"]
    assert {p["context"]["mode"] for p in partitions} == {"live", "simulated"}
    assert all(p["api_version"] == "v3" for p in partitions)


def test_full_refresh_into_postgres_removes_disconnected_vehicles_only_after_a_complete_read(
    meltano_project: MeltanoProject,
    postgres: Postgres,  # noqa: F811
) -> None:
    simulator = recent_simulator(300, seed=8)
    try:
        env = {**tap_env(simulator, "pg-full"), **postgres.target_env("full_refresh")}
        first = meltano_project.run("schedule", "run", "connections-weekly-full-refresh", env=env)
        assert first.returncode == 0, failed(first)
        loaded = table(postgres, "full_refresh")
        assert active(loaded) == served(simulator)
        assert len({r["_sdc_table_version"] for r in loaded.values()}) == 1

        everything = simulator.connections()
        gone = {(c["userId"], c["vehicleId"]) for c in everything[:: len(everything) // 3][:3]}
        for user_id, vehicle_id in gone:
            assert simulator.remove(user_id, vehicle_id)
        second = meltano_project.run("run", "connections-full-refresh", env=env)
        assert second.returncode == 0, failed(second)
        soft = table(postgres, "full_refresh")

        hard_env = {**env, "TARGET_POSTGRES_HARD_DELETE": "true"}
        third = meltano_project.run("run", "connections-full-refresh", env=hard_env)
        assert third.returncode == 0, failed(third)
        hard = table(postgres, "full_refresh")

        simulator.clear_log()
        simulator.faults.fail_after_page = 1
        broken_env = {**hard_env, "TAP_SMARTCAR_CONNECTIONS_MAX_RETRY_SECONDS": "0"}
        broken = meltano_project.run("run", "connections-full-refresh", env=broken_env)
        after_failure = table(postgres, "full_refresh")
    finally:
        simulator.stop()

    assert active(soft) == served(simulator)
    assert {k for k, r in soft.items() if r["_sdc_deleted_at"] is not None} == gone
    assert len(soft) == len(loaded)
    assert active(hard) == served(simulator)
    assert len(hard) == len(simulator) == len(loaded) - 3

    assert broken.returncode != 0
    assert "still failing after 1 attempts" in broken.stderr
    assert [r.status for r in simulator.requests] == [200, 500]
    assert active(after_failure) == active(hard)
    assert after_failure.keys() == hard.keys()


def duckdb_rows(project: MeltanoProject, path: Path, sql: str) -> list[list[t.Any]]:
    """Run SQL on a DuckDB file with the duckdb package that target-duckdb was installed with."""
    python = project.root / ".meltano" / "loaders" / "target-duckdb" / "venv" / "bin" / "python"
    script = (
        "import duckdb, json, sys\n"
        "with duckdb.connect(sys.argv[1], read_only=True) as db:\n"
        "    print(json.dumps(db.sql(sys.argv[2]).fetchall(), default=str))\n"
    )
    proc = subprocess.run(
        [python, "-c", script, path, sql], capture_output=True, text=True, timeout=60, check=True
    )
    rows: list[list[t.Any]] = json.loads(proc.stdout)
    return rows


def duckdb_connections(project: MeltanoProject, path: Path) -> list[Row]:
    """Every row of the loaded `connections` table, `connectedAt` in the tap's UTC form."""
    rows = duckdb_rows(
        project,
        path,
        "SELECT userid, vehicleid, strftime(connectedat, '%Y-%m-%dT%H:%M:%S.%fZ'), mode "
        "FROM main.connections",
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_runs_into_duckdb_keep_one_row_per_connection(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    database = tmp_path / "smartcar.duckdb"
    simulator = recent_simulator(300, seed=9)
    try:
        env = {
            **tap_env(simulator, "duckdb"),
            "TARGET_DUCKDB_FILEPATH": str(database),
            # Several batches: target-duckdb 0.8.0 with duckdb >= 1.3 loses each one's first row.
            # Not a divisor of 300: when a run's last record fills a batch, target-duckdb 0.8.0
            # forwards the STATE of that flush and drops the tap's later, final STATE.
            "TARGET_DUCKDB_BATCH_SIZE_ROWS": "128",
        }
        first = meltano_project.run("run", "tap-smartcar-connections", "target-duckdb", env=env)
        assert first.returncode == 0, failed(first)
        loaded = duckdb_connections(meltano_project, database)
        assert len(loaded) == len(simulator) == 300
        assert set(loaded) == served(simulator)
        new = connect_new(simulator, 6)
        second = meltano_project.run("run", "tap-smartcar-connections", "target-duckdb", env=env)
        assert second.returncode == 0, failed(second)
        again = duckdb_connections(meltano_project, database)

        # A full refresh sends every connection again, and ACTIVATE_VERSION after it, which
        # target-duckdb ignores: a vehicle disconnected in the meantime keeps its row.
        gone = simulator.connections()[0]
        assert simulator.remove(gone["userId"], gone["vehicleId"])
        full = meltano_project.run(
            "run", "tap-smartcar-connections--full", "target-duckdb", env=env
        )
        assert full.returncode == 0, failed(full)
        refreshed = duckdb_connections(meltano_project, database)
    finally:
        simulator.stop()
    assert f"Loading {len(new)} rows" in second.stderr
    assert len(again) == 306
    assert set(again) == served(simulator) | {
        (gone["userId"], gone["vehicleId"], normalize_timestamp(gone["connectedAt"]), gone["mode"])
    }
    assert sorted(refreshed) == sorted(again)


def readme_config_commands() -> list[str]:
    """The `meltano config set` lines of the README's shell blocks, without their comments."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [
        line.split("  #", 1)[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith(".venv/bin/meltano config set ")
    ]


@pytest.fixture
def project_copy(tmp_path: Path) -> MeltanoProject:
    """The repository's meltano.yml alone in a directory, with `.venv/bin/meltano` at hand."""
    shutil.copy(ROOT / "meltano.yml", tmp_path / "meltano.yml")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "meltano").symlink_to(MELTANO)
    return MeltanoProject(tmp_path)


def test_the_readmes_config_commands_leave_meltano_yml_unchanged(
    project_copy: MeltanoProject,
) -> None:
    original = (ROOT / "meltano.yml").read_bytes()
    commands = readme_config_commands()
    commands += [
        ".venv/bin/meltano config set --store=dotenv target-postgres host db.example.com",
        ".venv/bin/meltano config set tap-smartcar-connections management_token x",
    ]
    values = {
        "token": TOKEN,
        "PGPASSWORD": PASSWORD,
        "client_id": "client_0123456789abcdef",
        "client_secret": CLIENT_SECRET,
    }

    for command in commands:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=project_copy.root,
            env={**clean_environment(), **values},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        assert (project_copy.root / "meltano.yml").read_bytes() == original, command
    printed = project_copy.run("config", "print", "target-postgres")
    dotenv = (project_copy.root / ".env").read_text()

    assert len(commands) >= 10, commands
    assert any("target-postgres port" in c for c in commands)
    assert printed.returncode == 0, failed(printed)
    assert json.loads(printed.stdout)["host"] == "db.example.com"
    for name in ("HOST", "PORT", "USER", "DATABASE", "PASSWORD"):
        assert f"TARGET_POSTGRES_{name}=" in dotenv
    assert "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN='x'" in dotenv
    # The API v3 switch (README, "API v3"): every value in .env, none in meltano.yml.
    assert any("api_version v3" in c for c in commands)
    for line in (
        "TAP_SMARTCAR_CONNECTIONS_API_VERSION='v3'",
        "TAP_SMARTCAR_CONNECTIONS_CLIENT_ID='client_0123456789abcdef'",
        f"TAP_SMARTCAR_CONNECTIONS_CLIENT_SECRET='{CLIENT_SECRET}'",
    ):
        assert line in dotenv, line


def test_meltano_yml_is_in_the_form_meltano_writes(project_copy: MeltanoProject) -> None:
    """A plain `config set` into meltano.yml adds its one line and rewrites nothing else."""
    meltano_yml = project_copy.root / "meltano.yml"
    original = meltano_yml.read_text()
    hint = (
        "meltano.yml is not in the form Meltano writes: let Meltano rewrite a copy "
        "(`meltano config set target-postgres host h`, then `unset`) and commit that"
    )

    stored = project_copy.run("config", "set", "target-postgres", "host", "db.example.com")
    written = meltano_yml.read_text()
    removed = project_copy.run("config", "unset", "target-postgres", "host")

    assert stored.returncode == 0, failed(stored)
    assert removed.returncode == 0, failed(removed)
    assert written.replace("      host: db.example.com\n", "", 1) == original, hint
    assert written != original
    assert meltano_yml.read_text() == original, hint


def json_events(stderr: str) -> list[dict[str, t.Any]]:
    """Meltano's `--log-format=json` records (each plugin's parsed records among them)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_the_taps_final_error_reaches_meltano_at_error_level(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    with SmartcarSimulator(generate_connections(20, seed=12), token=TOKEN) as simulator:
        simulator.faults.force_status = 401
        env = {**tap_env(simulator, "error-level"), "TARGET_JSONL_DESTINATION_PATH": str(tmp_path)}
        proc = meltano_project.run(
            "--log-format=json", "run", "tap-smartcar-connections", "target-jsonl", env=env
        )

    assert proc.returncode == 1, failed(proc)
    assert simulator.requests
    assert {r.status for r in simulator.requests} == {401}
    finals = [
        e for e in json_events(proc.stderr) if "tap-smartcar-connections: error:" in e["event"]
    ]
    # The tap's own structured record, which Meltano parses (`name`, `app_name` come from the
    # tap) and re-logs at the tap's level; a plain stderr line would arrive at "info".
    assert len(finals) == 1, finals
    (final,) = finals
    assert final["event"].startswith(
        "tap-smartcar-connections: error: Smartcar API error 401 AUTHENTICATION"
    )
    assert final["level"] == "error", final
    assert final["name"] == "tap-smartcar-connections"
    assert final["app_name"] == "singer-sdk"
    assert final["string_id"] == "tap-smartcar-connections"


def test_an_interrupted_meltano_run_is_resumed_from_its_checkpoint_by_the_next(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    rows = generate_connections(200, seed=13, modes=("live",), start=start)
    simulator = SmartcarSimulator(rows, token=TOKEN)
    simulator.start()
    state_id = "dev:tap-smartcar-connections-to-target-jsonl:resume"
    pages, failing_page = 20, 9  # 200 connections, 10 a page
    try:
        env = {
            **tap_env(simulator, "resume"),
            "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
            "TAP_SMARTCAR_CONNECTIONS_MODES": '["live"]',
            "TAP_SMARTCAR_CONNECTIONS_PAGE_SIZE": "10",
            "TAP_SMARTCAR_CONNECTIONS_MAX_RETRY_SECONDS": "0",
        }
        output = tmp_path / "connections.jsonl"
        simulator.faults.fail_after_page = failing_page - 1
        first = meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env)
        interrupted = list(simulator.requests)
        written_first = len(output.read_text().splitlines())
        saved = meltano_project.run("state", "get", state_id, env=env)

        simulator.faults.fail_after_page = None
        simulator.clear_log()
        second = meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env)
        resumed = list(simulator.requests)
        final = meltano_project.run("state", "get", state_id, env=env)
    finally:
        simulator.stop()

    assert first.returncode == 1
    assert "still failing after 1 attempts" in first.stderr
    assert [r.status for r in interrupted] == [200] * (failing_page - 1) + [500]
    assert written_first == 10 * (failing_page - 1)
    # Meltano keeps the STATE the target forwarded before the tap failed: the checkpoint names
    # the page that failed, and the bookmark has not moved.
    assert saved.returncode == 0, failed(saved)
    (partition,) = json.loads(saved.stdout)["singer_state"]["bookmarks"]["connections"][
        "partitions"
    ]
    assert partition["context"] == {"mode": "live"}
    assert "replication_key_value" not in partition
    checkpoint = partition["checkpoint"]
    assert checkpoint["cursor"] == interrupted[-1].params["cursor"]
    assert checkpoint["page_size"] == 10

    assert second.returncode == 0, failed(second)
    assert all(r.status == 200 for r in resumed)
    cursors = [r.params.get("cursor") for r in resumed]
    # The new head down to the newest instant already seen, then on from the saved cursor:
    # at most (P - p) + 2 requests (README), where a read from the top would take all 20.
    # (From the top, the walk would also reach that cursor, but only at its 9th request.)
    assert checkpoint["cursor"] in cursors[:2], cursors
    assert cursors.count(None) <= 1
    assert len(resumed) <= (pages - (failing_page - 1)) + 2, len(resumed)
    loaded = [json.loads(line) for line in output.read_text().splitlines()]
    assert {(r["userId"], r["vehicleId"]) for r in loaded} == {
        (c["userId"], c["vehicleId"]) for c in rows
    }
    # The failed page delivered nothing and nothing new arrived: nothing is sent twice here.
    assert len(loaded) == len(rows)
    (done,) = json.loads(final.stdout)["singer_state"]["bookmarks"]["connections"]["partitions"]
    assert "checkpoint" not in done
    assert done["replication_key_value"] == max(normalize_timestamp(c["connectedAt"]) for c in rows)


def link_checkout(root: Path) -> None:
    """Give a project `.venv` (this virtualenv) and the simulator, as a clone has them."""
    links = {".venv": Path(sys.prefix), "smartcar_simulator": ROOT / "smartcar_simulator"}
    for link, target in links.items():
        if not (root / link).exists():
            (root / link).symlink_to(target)


def readme_block(containing: str) -> list[str]:
    """The command lines of the README's shell block that contains `containing`."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if containing in b]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readmes_jsonl_steps_start_over(meltano_project: MeltanoProject) -> None:
    """Deleting the file alone would leave bookmarks that load only what is new."""
    root = meltano_project.root
    link_checkout(root)
    output = root / "output" / "connections.jsonl"
    simulator = recent_simulator(200, seed=17)
    try:
        env = {  # no state ID suffix: the README's state ID
            "TAP_SMARTCAR_CONNECTIONS_API_URL": simulator.api_url,
            "TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN": TOKEN,
        }
        runs = [meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env)]
        runs.append(meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env))
        lines_before = len(output.read_text().splitlines())
        commands = readme_block("state clear")
        for command in commands:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=root,
                env=clean_environment(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        runs.append(meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env))
    finally:
        simulator.stop()

    assert all(run.returncode == 0 for run in runs), [failed(run) for run in runs]
    assert commands[0] == "rm output/connections.jsonl"
    assert lines_before == 200  # the second run added nothing
    reloaded = [json.loads(line) for line in output.read_text().splitlines()]
    assert {(r["userId"], r["vehicleId"]) for r in reloaded} == {
        (c["userId"], c["vehicleId"]) for c in simulator.connections()
    }
    assert len(reloaded) == 200


DEMO_SETUP = """\
# The tests' stand-in for scripts/setup.sh: .venv is the tests' own, already installed.
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true
"""
WARNING_LINE = re.compile(r"\[(warning|error) *\]|Traceback|METRIC|env var", re.IGNORECASE)


@pytest.fixture
def demo(meltano_project: MeltanoProject) -> t.Callable[..., subprocess.CompletedProcess[str]]:
    """`bash scripts/demo.sh ARGS` in the session's Meltano project, as from a clone.

    The project holds the real demo script beside the simulator package, and `.venv` is this
    virtualenv (the script's setup step is replaced: it would reinstall the checkout there).
    """
    root = meltano_project.root
    (root / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    (root / "scripts" / "setup.sh").write_text(DEMO_SETUP)
    link_checkout(root)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "scripts/demo.sh", *args],
            cwd=root,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, failed(proc)
        # Nothing a person cannot act on: no WARNING or ERROR, no METRIC line, no traceback.
        assert not [line for line in proc.stderr.splitlines() if WARNING_LINE.search(line)]
        return proc

    return run


def test_the_jsonl_demo_starts_over_when_its_file_is_gone(
    meltano_project: MeltanoProject,
    demo: t.Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    output = meltano_project.root / "output" / "simulator"

    first = demo("target-jsonl")
    again = demo("target-jsonl")
    (output / "connections.jsonl").unlink()
    restarted = demo("target-jsonl")

    def loaded(proc: subprocess.CompletedProcess[str]) -> tuple[int, int]:
        match = re.search(
            r"Loaded (\d+) connections this run .* \((\d+) rows in the file\)", proc.stdout
        )
        assert match, proc.stdout
        return int(match[1]), int(match[2])

    assert loaded(first) == (1000, 1000)
    assert loaded(again) == (0, 1000)
    assert "resetting this pipeline's bookmarks" not in again.stderr
    assert "No output/simulator/connections.jsonl yet: resetting" in restarted.stderr
    assert loaded(restarted) == (1000, 1000)
    assert len((output / "connections.jsonl").read_text().splitlines()) == 1000


def test_the_duckdb_demo_of_either_api_version_loads_every_table(
    demo: t.Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    v2 = demo()
    v3 = demo("--api", "v3")

    for proc in (v2, v3):
        assert "Smartcar simulator listening on" in proc.stdout
        assert "API v2 at /v2.0, API v3 at /vehicle/v3" in proc.stdout
        assert "1000 rows in table connections, 1000 distinct (userId, vehicleId)" in proc.stdout
    assert "rows in table webhooks" not in v2.stdout
    assert "(API v3)" in v3.stdout
    assert "3 rows in table webhooks" in v3.stdout
    assert "6 rows in table subscriptions" in v3.stdout


def test_a_ctrl_c_on_meltano_run_into_duckdb_keeps_its_written_batches_and_the_next_run_resumes(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    """Ctrl-C signals Meltano, the tap and the target at once, as a terminal does.

    target-duckdb hands Meltano a STATE only when it writes a batch, so what an interrupted run
    keeps is its batches written so far: with meltano.yml's `batch_size_rows`, the next run
    resumes from the last of them instead of reading every page again.
    """
    loaders = yaml.safe_load((ROOT / "meltano.yml").read_text())["plugins"]["loaders"]
    (duckdb,) = [loader for loader in loaders if loader["name"] == "target-duckdb"]
    batch = duckdb["config"]["batch_size_rows"]
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    rows = generate_connections(50 * 100, seed=15, modes=("live",), start=start)
    database = tmp_path / "smartcar.duckdb"
    env = {
        **clean_environment(),
        "TAP_SMARTCAR_CONNECTIONS_MODES": '["live"]',
        "TARGET_DUCKDB_FILEPATH": str(database),
    }
    with SmartcarSimulator(rows, token=TOKEN) as simulator:
        env |= tap_env(simulator, "ctrl-c")
        simulator.faults.latency = 0.1  # 50 pages in about 5 s
        interrupted = subprocess.Popen(
            [MELTANO, "run", "tap-smartcar-connections", "target-duckdb"],
            cwd=meltano_project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, which the signal goes to
        )
        deadline = time.monotonic() + 120
        while len(simulator.requests) < 2 * batch // 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        read_before = len(simulator.requests)
        os.killpg(interrupted.pid, signal.SIGINT)
        output, _ = interrupted.communicate(timeout=120)
        kept = len(duckdb_connections(meltano_project, database))
        saved = meltano_project.run(
            "state", "get", "dev:tap-smartcar-connections-to-target-duckdb:ctrl-c", env=env
        )
        simulator.faults.latency = 0
        simulator.clear_log()
        resumed = meltano_project.run("run", "tap-smartcar-connections", "target-duckdb", env=env)
        read_after = len(simulator.requests)
        loaded = duckdb_connections(meltano_project, database)

    assert 2 * batch // 100 <= read_before < 50, "the signal came after the run had finished"
    assert interrupted.returncode != 0, output[-3000:]
    assert "stopped by SIGINT" in output
    assert kept >= batch
    (partition,) = json.loads(saved.stdout)["singer_state"]["bookmarks"]["connections"][
        "partitions"
    ]
    assert "checkpoint" in partition
    assert resumed.returncode == 0, failed(resumed)
    # The head page, then on from the last written batch's page: not all 50 pages again.
    assert read_after <= 50 - kept // 100 + 2, read_after
    assert sorted(loaded) == sorted(served(simulator))


def test_stopping_the_tap_alone_lets_target_jsonl_save_its_state_and_the_next_run_resume(
    meltano_project: MeltanoProject, tmp_path: Path
) -> None:
    """target-jsonl writes its STATE only at the end of its input, so a Ctrl-C keeps none.

    Stopping the tap alone (SIGTERM, as the docs say) ends the target's input instead: it
    writes the last STATE it had, Meltano saves it, and the next run goes on from there.
    """
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    rows = generate_connections(50 * 100, seed=16, modes=("live",), start=start)
    output = tmp_path / "connections.jsonl"
    env = {
        **clean_environment(),
        "TAP_SMARTCAR_CONNECTIONS_MODES": '["live"]',
        "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
    }
    with SmartcarSimulator(rows, token=TOKEN) as simulator:
        env |= tap_env(simulator, "stop-the-tap")
        simulator.faults.latency = 0.1
        run = subprocess.Popen(
            [MELTANO, "run", "tap-smartcar-connections", "target-jsonl"],
            cwd=meltano_project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not output.exists() or len(output.read_bytes().splitlines()) < 2000
        ):
            time.sleep(0.02)
        taps = subprocess.run(
            ["pgrep", "-g", str(run.pid), "-f", "bin/tap-smartcar-connections"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for pid in taps:
            os.kill(int(pid), signal.SIGTERM)
        output_text, _ = run.communicate(timeout=120)
        written = len(output.read_text().splitlines())
        simulator.faults.latency = 0
        simulator.clear_log()
        resumed = meltano_project.run("run", "tap-smartcar-connections", "target-jsonl", env=env)
        read_after = len(simulator.requests)

    assert len(taps) == 1
    assert "stopped by SIGTERM" in output_text
    assert 2000 <= written < 5000
    assert resumed.returncode == 0, failed(resumed)
    assert read_after <= 50 - written // 100 + 2, read_after
    loaded = [json.loads(line) for line in output.read_text().splitlines()]
    assert {(r["userId"], r["vehicleId"]) for r in loaded} == {
        (c["userId"], c["vehicleId"]) for c in rows
    }
    assert len(loaded) <= len(rows) + 100  # at most the page being read again
